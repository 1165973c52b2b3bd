"""A header's configuration in a few words, for the dashboard's header line."""

from __future__ import annotations

from tracer.events import SessionHeader


def config_summary(header: SessionHeader | None) -> dict[str, str]:
    """Model, device and policy named from a header's config, tolerant of missing keys."""
    cfg = header.config if header is not None else {}
    model = cfg.get("model") or {}
    sched = cfg.get("scheduler") or {}
    workload = cfg.get("workload") or {}
    device = cfg.get("device_name") or cfg.get("device") or "?"
    if isinstance(device, dict):
        device = device.get("name", device.get("type", "?"))
    if cfg.get("decode_graphs") == "cuda graphs":  # how the decode ticks ran shapes their times
        compiled = sched.get("decode_compile", "off") != "off"
        device = f"{device}, CUDA graphs{' (compiled)' if compiled else ''}"
    policy = str(sched.get("policy", "?"))
    window = sched.get("window_ms")
    # has_window is in the header since format 1.3's recordings; before, only "window" waited on one
    if window is not None and sched.get("has_window", policy == "window"):
        policy += f" {window:g}ms"
    if sched.get("max_seqs") is not None:
        policy += f" max{sched['max_seqs']}"
    experts = model.get("experts", model.get("routed_experts"))
    shape = ""
    if model.get("layers") and experts:
        shape = f" {model['layers']}L×{experts}E"
        if model.get("top_k"):
            shape += f" top{model['top_k']}"
    return {
        "model": f"{model.get('name', cfg.get('preset', '?'))}{shape}",
        "device": str(device),
        "policy": policy,
        "workload": str(workload.get("name", "?")),
    }
