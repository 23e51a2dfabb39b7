"""Interrupted and failed training runs (issue 15): a run killed while writing its first
``last.pt`` resumes from the newest complete ``step-*.pt`` and still reproduces an uninterrupted
run exactly; logs never hold a step twice; orphaned temporaries go; a fresh run over a killed
run's logs starts them afresh; a failed start leaves nothing behind. Short smoke runs on the
session's tiny synthetic set (tests/conftest.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, smoke_args
from mvf.cli import main
from mvf.train.logs import read_csv

# every step logged, a checkpoint every 2 steps (all kept), validation at 4, augmentation on
EXTRA = ["--set", "log_every=1", "--set", "checkpoint_every=2", "--set", "keep_checkpoints=5",
         "--set", "validation.every_steps=4", "--set", "stages.0.data.augment={}"]

# `mvf train` that is SIGKILLed in the middle of writing the first temporary whose name starts
# with argv[1] (half its bytes on disk), as a kill during an atomic checkpoint write leaves it.
KILLER = """
import os, signal, sys
import torch
real = torch.save
def save(obj, f, *args, **kwargs):
    real(obj, f, *args, **kwargs)
    if os.path.basename(str(f)).startswith(sys.argv[1]):
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
from mvf.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _steps(run) -> list[int]:
    return [int(r["step"]) for r in read_csv(run / "train.csv")]


def _losses(run) -> list[float]:
    return [float(r["loss"]) for r in read_csv(run / "train.csv")]


def _temporaries(run) -> list[str]:
    return sorted(p.name for p in run.rglob("*") if ".tmp" in p.name or ".mvf-write-check" in p.name)


def _same_weights(a, b) -> None:
    ca = torch.load(a / "last.pt", weights_only=True)
    cb = torch.load(b / "last.pt", weights_only=True)
    assert ca["step"] == cb["step"]
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    for pid, state in ca["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], cb["optimizer"]["state"][pid]["exp_avg_sq"])


@pytest.fixture(scope="module")
def straight(tiny_synth, tmp_path_factory):
    """6 uninterrupted steps."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert main(smoke_args(tiny_synth, run, "--steps", "6", *EXTRA)) == 0
    return run


def test_killed_during_first_last_pt_write_resumes_exactly(tiny_synth, straight, tmp_path, capsys):
    """A real SIGKILL while ``last.pt`` is first written (step 2): ``--resume`` falls back to the
    complete ``step-0000002.pt`` with a one-line notice; the finished run equals the
    uninterrupted one (losses, weights, Adam state), each step logged once, no temporaries."""
    run = tmp_path / "run"
    args = smoke_args(tiny_synth, run, "--steps", "6", *EXTRA)
    proc = subprocess.run([sys.executable, "-c", KILLER, ".last.", *args], cwd=ROOT, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (run / "last.pt").exists() and (run / "step-0000002.pt").is_file()
    assert [n for n in _temporaries(run) if n.startswith(".last.")]  # the orphan a kill leaves
    # a plain rerun does not silently start over a run that can be resumed
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run (step-0000002.pt)" in err and "\n" not in err
    # resume
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"notice: {run / 'last.pt'}: missing; resuming from step-0000002.pt (step 2)"]
    assert _steps(run) == [1, 2, 3, 4, 5, 6]
    assert _losses(run) == _losses(straight)  # bit-identical
    assert read_csv(run / "val.csv") == read_csv(straight / "val.csv")
    _same_weights(straight, run)
    assert _temporaries(run) == []


def test_resume_skips_unreadable_checkpoints(tiny_synth, straight, tmp_path, capsys):
    """``last.pt`` and ``step-0000004.pt`` truncated (and a CSV row cut short): resume takes the
    newest checkpoint that loads (step 2), drops the logged rows after it, and ends exactly as
    the uninterrupted run."""
    run = tmp_path / "run"
    args = smoke_args(tiny_synth, run, *EXTRA)
    assert main([*args, "--steps", "4"]) == 0
    for name in ("last.pt", "step-0000004.pt"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 3])
    with open(run / "train.csv", "a") as fh:
        fh.write("5,supervis")  # a row the kill cut short
    assert _steps(run)[:4] == [1, 2, 3, 4]
    capsys.readouterr()
    assert main([*args, "--steps", "6", "--resume"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"notice: {run / 'last.pt'}: unreadable; resuming from step-0000002.pt (step 2)"]
    assert _steps(run) == [1, 2, 3, 4, 5, 6]
    assert _losses(run) == _losses(straight)
    assert read_csv(run / "val.csv") == read_csv(straight / "val.csv")  # step 4's row not twice
    _same_weights(straight, run)
    assert sorted(p.name for p in run.glob("step-*.pt")) == [f"step-000000{k}.pt" for k in (2, 4, 6)]
    # killed while replacing last.pt: the old last.pt (step 2) is older than step-0000006.pt,
    # which is taken; nothing is left to train, so nothing is saved, validated or logged again
    shutil.copyfile(run / "step-0000002.pt", run / "last.pt")
    logs = [(run / n).read_bytes() for n in ("train.csv", "val.csv")]
    assert main([*args, "--steps", "6", "--resume"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"notice: {run / 'last.pt'}: at step 2; resuming from step-0000006.pt (step 6)"]
    assert [(run / n).read_bytes() for n in ("train.csv", "val.csv")] == logs


def test_fresh_run_over_a_killed_runs_logs_starts_them_afresh(tiny_synth, straight, tmp_path):
    """A folder with logs, TensorBoard events, a best.pt and orphaned temporaries but no
    checkpoint (killed before its first one): a fresh run rewrites the logs instead of
    appending, replaces the events and removes the temporaries."""
    run = tmp_path / "run"
    args = smoke_args(tiny_synth, run, *EXTRA, "--set", "tensorboard=true")
    assert main([*args, "--steps", "5"]) == 0
    for p in run.glob("*.pt"):
        if p.name != "best.pt":
            p.unlink()
    (run / ".step-0000006.x1y2z3_q.tmp.pt").write_bytes(b"half a checkpoint")
    (run / ".train.q9w8abcd.tmp.csv").write_text("step\n")
    old_events = sorted((run / "tb").glob("events.out.tfevents.*"))
    assert len(old_events) == 1 and _steps(run) == [1, 2, 3, 4, 5]
    assert main([*args, "--steps", "6"]) == 0
    assert _steps(run) == [1, 2, 3, 4, 5, 6]
    assert _losses(run) == _losses(straight)
    assert read_csv(run / "val.csv") == read_csv(straight / "val.csv")
    events = sorted((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events != old_events
    assert _temporaries(run) == []


@pytest.fixture
def errors(capsys):
    """Run `mvf ARGS`; assert exit 2 and one line on stderr; return that line."""
    def run(args: list[str]) -> str:
        capsys.readouterr()
        rc = main(args)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert "Traceback" not in err
        return err

    return run


def test_failed_start_leaves_nothing_behind(tiny_synth, tmp_path, errors):
    # a dataset with truncated PNGs: the new folder (and its new parent) are removed again
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    for png in data.glob("*/front.png"):
        png.write_bytes(png.read_bytes()[:500])
    out = tmp_path / "new" / "run"
    err = errors(smoke_args(data, out, "--steps", "2"))
    assert "front.png: unreadable image" in err
    assert not (tmp_path / "new").exists()
    # also when a DataLoader worker meets it (one line, not the worker's traceback)
    err = errors(smoke_args(data, out, "--steps", "2", "--set", "stages.0.data.num_workers=1"))
    assert "front.png: unreadable image" in err and not (tmp_path / "new").exists()
    # a config error after set-up, in a folder of the user's: only what the run made goes
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "tb").mkdir()
    (mine / "tb" / "old.txt").write_text("mine too")
    err = errors(smoke_args(tiny_synth, mine, "--set", "tensorboard=true",
                            "--set", "stages.0.freeze=[encoder, fusion, head_]"))
    assert "leaves no parameter to train" in err
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == ["notes.txt", "tb", "tb/old.txt"]
    # nothing to resume
    err = errors(smoke_args(tiny_synth, tmp_path / "absent", "--resume"))
    assert "last.pt: checkpoint not found" in err and not (tmp_path / "absent").exists()


@pytest.mark.parametrize("command", ["train", "synth"])
def test_out_in_the_way_of_a_file(tiny_synth, tmp_path, errors, command):
    """``--out`` an existing file, or under one: one line naming it, exit 2, nothing created."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, needle in ((blocker, "output folder is a file"),
                        (blocker / "sub" / "run", f"output folder lies under a file ({blocker})")):
        if command == "train":
            args = smoke_args(tiny_synth, out)
        else:
            args = ["synth", "--out", str(out), "--subjects", "1", "--size", "32", "--quiet"]
        err = errors(args)
        assert f"{out}: {needle}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and blocker.read_text() == "x"
