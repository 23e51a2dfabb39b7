"""Shared fixtures: a tiny synthetic dataset and a briefly trained smoke checkpoint.

* ``tiny_synth``: 8 subjects at 64 px made once per session with `mvf synth` (seed 123) into a
  temporary folder. Any test may use it read-only.
* ``smoke_args(data, out, *extra)``: the `mvf train` arguments of configs/smoke.yaml pointed at
  ``data`` (validation and stage roots), no TensorBoard.
* ``smoke_checkpoint``: configs/smoke.yaml trained for 10 steps on ``tiny_synth`` (``last.pt``).
* ``one_thread``: torch on one thread for a test module (small tensor ops run faster on one
  thread, and much faster on a shared machine); a module opts in with
  ``pytestmark = pytest.mark.usefixtures("one_thread")``.
* ``model`` / ``face``: the face model asset (`FaceModel.load()`), one per test module.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mvf.cli import main
from mvf.face.model import FaceModel

ROOT = Path(__file__).resolve().parents[1]
TINY_SUBJECTS = 8
TINY_SIZE = 64
TINY_SEED = 123


def make_synth(out: Path, subjects: int, seed: int, size: int) -> Path:
    """Generate a synthetic dataset with `mvf synth` (in-process)."""
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
    out = tmp_path_factory.mktemp("smoke_run") / "run"
    assert main(smoke_args(tiny_synth, out, "--steps", "10")) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread while the module runs; the previous count restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def face(model) -> FaceModel:
    """The same face model as ``model`` (the name some modules use)."""
    return model
