"""Checkpoints for training: atomic save, RNG state capture; reading is `mvf.net.checkpoint`.

A checkpoint is a ``torch.save`` dict (loaded with ``weights_only=True``)::

    format "mvf-checkpoint", version 1,
    config      the full training config (`mvf.config.to_dict`),
    model       network state dict,
    optimizer   Adam state dict of the running stage (or None), optimizer_stage: its index,
    step        global steps completed,
    best        {"metric": name, "value": float | None, "step": int | None},
    rng         torch / numpy / python RNG states,
    face_model  asset id of the face model the network was trained with,
    pose_norm   {"mean": [6], "scale": [6]} (documentation; rebuilt from the config)
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvf.errors import MvfError
from mvf.fileio import atomic_path
from mvf.net.checkpoint import FORMAT, VERSION, load_checkpoint, load_model_state

LAST_NAME = "last.pt"
STEP_PATTERN = re.compile(r"step-(\d+)\.pt")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def step_name(step: int) -> str:
    """File name of the periodic checkpoint after ``step`` global steps."""
    return f"step-{step:07d}.pt"


def step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the run folder's ``step-NNNNNNN.pt`` files, oldest first."""
    found = []
    for p in Path(run_dir).glob("step-*.pt"):
        m = STEP_PATTERN.fullmatch(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_resume_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any], Path, str | None]:
    """The checkpoint to resume a run from: ``last.pt``, unless a kill while writing it left it
    missing, unreadable or older than a ``step-*.pt``; then the newest step file that loads.

    Returns ``(checkpoint, its path, notice)``; ``notice`` is a one-line explanation when it took
    a step file, else None. `MvfError` (last.pt's own error) when nothing loads.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST_NAME
    ckpt, error = None, None
    try:
        ckpt = load_checkpoint(last)
    except MvfError as e:
        error = e
    done = -1 if ckpt is None else int(ckpt["step"])
    for step, path in reversed(step_checkpoints(run_dir)):
        if step <= done:
            break
        try:
            newer = load_checkpoint(path)
        except MvfError:
            continue
        why = ("missing" if not last.exists() else "unreadable") if ckpt is None else f"at step {done}"
        return newer, path, f"{last}: {why}; resuming from {path.name} (step {int(newer['step'])})"
    if ckpt is None:
        raise error
    return ckpt, last, None


__all__ = ["LAST_NAME", "load_checkpoint", "load_model_state", "load_resume_checkpoint", "rng_state",
           "save_checkpoint", "set_rng_state", "step_checkpoints", "step_name"]


def rng_state() -> dict[str, Any]:
    """The global torch, numpy and python RNG states (weights_only-safe types)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
