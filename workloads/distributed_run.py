"""A torchrun rank other than 0 in `tickscope record --distributed`: it serves its pipeline stage.

torchrun starts the same command line on every rank; rank 0 records (workloads/run.py, through
engine/launch.py), and the others resolve the same configuration here and serve their stage until
rank 0 says stop. They write no trace: rank 0 collects their cells every tick.
"""

from __future__ import annotations

from engine.errors import StageLost
from engine.launch import serve_from_env
from workloads.errors import RunFailed
from workloads.run import RecordingPlan, prepare


def serve_rank(plan: RecordingPlan) -> int:
    """Serve this rank's stage; returns the ticks served. RunFailed when the pipeline broke (rank 0,
    or the rank before or after this one, was lost)."""
    prepared = prepare(plan)
    try:
        return serve_from_env(prepared.model_cfg, prepared.sched_cfg, plan.device, plan.seed or 0)
    except StageLost as lost:
        raise RunFailed(str(lost)) from lost
