"""Shared fixtures: a tiny synthetic dataset and a briefly trained smoke checkpoint.

* ``tiny_synth``: 8 subjects at 64 px made once per session with `mvf synth` (seed 123) into a
  temporary folder. Any test may use it read-only.
* ``smoke_args(data, out, *extra)``: the `mvf train` arguments of configs/smoke.yaml pointed at
  ``data`` (validation and stage roots), no TensorBoard.
* ``smoke_checkpoint``: configs/smoke.yaml trained for 10 steps on ``tiny_synth`` (``last.pt``).
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_SUBJECTS = 8
TINY_SIZE = 64
TINY_SEED = 123


def make_synth(out: Path, subjects: int, seed: int, size: int) -> Path:
    """Generate a synthetic dataset with `mvf synth` (in-process)."""
    from mvf.cli import main

    rc = main(["synth", "--out", str(out), "--subjects", str(subjects), "--seed", str(seed),
               "--size", str(size), "--quiet"])
    assert rc == 0, f"mvf synth failed with status {rc}"
    return out


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("tiny_synth") / "data", TINY_SUBJECTS, TINY_SEED, TINY_SIZE)


def smoke_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), "--quiet",
            "--set", f"validation.root={data}", "--set", f"stages.0.data.root={data}",
            "--set", "tensorboard=false", *extra]


@pytest.fixture(scope="session")
def smoke_checkpoint(tiny_synth, tmp_path_factory) -> Path:
    from mvf.cli import main

    out = tmp_path_factory.mktemp("smoke_run") / "run"
    assert main(smoke_args(tiny_synth, out, "--steps", "10")) == 0
    return out / "last.pt"
