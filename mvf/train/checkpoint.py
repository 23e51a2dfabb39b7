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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvf.fileio import atomic_path
from mvf.net.checkpoint import FORMAT, VERSION, load_checkpoint, load_model_state


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


__all__ = ["load_checkpoint", "load_model_state", "rng_state", "save_checkpoint", "set_rng_state"]


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
