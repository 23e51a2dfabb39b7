"""Quiet training still shows progress: `mvf.train.status.StatusLine` and `mvf train --quiet`."""
from __future__ import annotations

import io

from conftest import smoke_args
from mvf.cli import main
from mvf.train.status import StatusLine, format_duration


def test_status_line_prints_every_interval_with_rate_and_eta():
    now = [100.0]
    out = io.StringIO()
    st = StatusLine(total=100, start_step=0, enabled=True, every_s=10.0, stream=out, clock=lambda: now[0])
    printed = []
    for step in range(1, 101):
        now[0] += 0.5  # 2 steps a second
        printed.append(st.update(step, "geometry", 0.25, force=step == 100))
    lines = out.getvalue().splitlines()
    assert sum(printed) == len(lines) == 5  # at 10, 20, 30, 40 s and the forced end
    assert lines[0] == "train: step 20/100 (geometry) 2.00 step/s, loss 0.25, eta 40s"
    assert lines[-1].startswith("train: step 100/100") and lines[-1].endswith("eta 0s")


def test_status_line_disabled_prints_nothing():
    out = io.StringIO()
    st = StatusLine(total=10, start_step=0, enabled=False, every_s=0.0, stream=out)
    assert not st.update(5, "s", 1.0, force=True) and out.getvalue() == ""


def test_format_duration():
    assert [format_duration(s) for s in (4.2, 65, 3725)] == ["4s", "1m05s", "1h02m05s"]


def test_quiet_training_ends_with_a_status_line(tiny_synth, tmp_path, capsys):
    assert main(smoke_args(tiny_synth, tmp_path / "run", "--steps", "4", "--set", "progress=true")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("train: step 4/4 (")
