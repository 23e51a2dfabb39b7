"""The calibrated landmark set's asset file: where it lives, how it is written and read.

``assets/mediapipe_landmarks.npz`` (git-ignored: derived from the ICT model) holds a
`mvf.face.landmarks.LandmarkSet` as `landmark_set_to_numpy` arrays, its detector error model and
provenance; `mvf.recon.calibrate` builds it (``mvf build-model``). Reading it needs neither the
detector nor the renderer, so the reconstruction and training paths load it from here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mvf.face.landmarks import LandmarkSet, landmark_set_from_arrays, landmark_set_to_numpy
from mvf.face.model import REPO_ROOT
from mvf.fileio import atomic_path

DEFAULT_SET = REPO_ROOT / "assets" / "mediapipe_landmarks.npz"


def save_landmark_set(lset: LandmarkSet, path: str | os.PathLike = DEFAULT_SET) -> Path:
    """Write the set atomically as ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **landmark_set_to_numpy(lset))
    return path


def load_landmark_set(path: str | os.PathLike | None = None, model=None) -> LandmarkSet | None:
    """The calibrated set at ``path`` (default `DEFAULT_SET`), or None when it is absent (or built
    for another face model asset than ``model``, a `mvf.face.model.FaceModel`)."""
    path = Path(path) if path else DEFAULT_SET
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        lset = landmark_set_from_arrays({k: z[k] for k in z.files})
    if model is not None and lset.meta.get("asset_id") not in (None, model.asset_id):
        return None
    return lset
