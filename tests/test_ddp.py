"""DDP: `torchrun --nproc_per_node=2 -m mvf train` on the CPU (gloo) trains and keeps the ranks in
sync (every rank's parameter checksum is gathered at the end into ddp_sync.json)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, smoke_args


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("torchrun")
    if not found:
        pytest.skip("torchrun not installed")
    return [found]


def test_two_process_training_stays_in_sync(tiny_synth, tmp_path):
    run = tmp_path / "ddp"
    steps = 6
    args = smoke_args(tiny_synth, run, "--steps", str(steps), "--set", "log_every=1",
                      "--set", "validation.every_steps=3", "--set", "threads=null")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "mvf", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync = json.loads((run / "ddp_sync.json").read_text())
    assert sync["world"] == 2 and sync["step"] == steps
    a, b = sync["checksums"]
    assert a == b  # identical weights and buffers on both ranks
    # rank 0 alone wrote the logs: one row per step, and the weights moved from the start
    rows = (run / "train.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, steps + 1))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == steps
    from mvf.train.ddp import parameter_checksum
    from mvf.net.checkpoint import load_model

    model = load_model(run / "last.pt")
    assert parameter_checksum(model.net) == pytest.approx(a, rel=1e-12)
