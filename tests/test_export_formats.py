"""tracer.EXPORTS is the one list of export formats: `tickscope export` offers and dispatches exactly
those, and each writes the kind of output the list says."""

import dataclasses
from pathlib import Path

import pytest

from tracer import EXPORTS, TraceWriter, export, from_events
from tracer.synth import synthetic_session
from tui.cli import build_parser, main


def export_option(dest: str):
    verbs = next(a for a in build_parser()._actions if a.dest == "verb")
    return next(a for a in verbs.choices["export"]._actions if a.dest == dest)


def test_the_command_line_offers_and_describes_the_registry():
    to = export_option("to")
    assert list(to.choices) == list(EXPORTS)
    for f in EXPORTS.values():
        assert f"{f.name}: {f.description}" in to.help
        assert f.name in export_option("out").help and f.output in export_option("out").help


@pytest.mark.parametrize("name", list(EXPORTS))
def test_each_format_writes_what_the_registry_says(tmp_path: Path, name: str):
    out = tmp_path / "out"
    export(from_events(*synthetic_session(5)), name, out)
    if EXPORTS[name].output == "file":
        assert out.is_file() and out.stat().st_size
    else:
        assert out.is_dir() and any(out.iterdir())


def test_an_unknown_format_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown export format 'svg'"):
        export(from_events(*synthetic_session(1)), "svg", tmp_path / "out")


def test_the_command_line_dispatches_through_the_registry(tmp_path: Path, monkeypatch, capsys):
    header, events = synthetic_session(3)
    trace = tmp_path / "t.msgpack"
    with TraceWriter(trace, header) as w:
        for ev in events:
            w.emit(ev)
    calls = []
    name = list(EXPORTS)[-1]
    monkeypatch.setitem(EXPORTS, name, dataclasses.replace(EXPORTS[name], write=lambda t, out: calls.append((t, out))))
    assert main(["export", str(trace), "--to", name, str(tmp_path / "x")]) == 0
    assert len(calls) == 1 and calls[0][0].ticks.height == 3 and calls[0][1] == tmp_path / "x"
    assert capsys.readouterr().out == f"wrote {tmp_path / 'x'}\n"
