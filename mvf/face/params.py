"""Face parameter files (JSON): coefficients, per-view poses and optional per-vertex colours.

Format::

    {"id": [k_id floats], "exp": [k_exp floats],
     "pose": {"front": [f, alpha, beta, gamma, tx, ty], "left": [...], "right": [...]},   # optional
     "colours": [[r, g, b], ...]}                                                          # optional, [0, 1]

``pose`` may also be a list of per-view 6-vectors in the order front, left, right.

Units and bounds (`check_params`, applied to every params file read and every face produced):
``id`` are in standard deviations of the identity prior (unit N(0, 1) per mode), refused beyond
``|id| > ID_BOUND`` (10 σ); ``exp`` are blendshape weights (nominal range [0, 1]), refused beyond
``|exp| > EXP_BOUND`` (10); every number (id, exp, pose, colours) must be finite, and a pose's
scale f (px/mm) positive.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mvf.errors import file_error
from mvf.face.model import FaceModel
from mvf.fileio import write_json
from renderer.views import VIEWS

ID_BOUND = 10.0  # |id| limit, in standard deviations of the N(0, 1) identity prior
EXP_BOUND = 10.0  # |exp| limit (blendshape weights, nominally in [0, 1])


def check_params(source: str | os.PathLike, id: np.ndarray | torch.Tensor, exp: np.ndarray | torch.Tensor,
                 poses: dict | np.ndarray | torch.Tensor | None = None,
                 colours: np.ndarray | torch.Tensor | None = None) -> None:
    """Refuse non-finite or absurd face parameters before any geometry is made from them.

    ``id`` ``(K_id,)`` σ units, ``exp`` ``(K_exp,)``, ``poses`` view -> ``(6,)`` (or ``(V, 6)``),
    ``colours`` ``(N, 3)``. `MvfError` ``"<source>: '<key>' ..."`` naming the first bad key.
    """
    def array(x) -> np.ndarray:
        return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)

    items = [("id", id, ID_BOUND), ("exp", exp, EXP_BOUND)]
    if poses is not None:
        named = poses.items() if isinstance(poses, dict) else zip(VIEWS, poses)
        items += [(f"pose.{v}", p, None) for v, p in named]
    if colours is not None:
        items.append(("colours", colours, None))
    for key, value, bound in items:
        arr = array(value)
        bad = ~np.isfinite(arr)
        if bad.any():
            raise file_error(source, f"'{key}' holds NaN or infinite values (at index {int(np.argmax(bad.ravel()))})")
        if key.startswith("pose.") and arr[0] <= 0:
            raise file_error(source, f"'{key}' scale f = {arr[0]:.4g} must be positive (px/mm)")
        if bound is not None and arr.size and np.abs(arr).max() > bound:
            i = int(np.argmax(np.abs(arr).ravel()))
            raise file_error(source, f"'{key}'[{i}] = {arr.ravel()[i]:.4g} is beyond the bound "
                                     f"|{key}| <= {bound:g}" + (" (σ units)" if key == "id" else ""))


@dataclass
class FaceParams:
    """Coefficients ``id`` (k_id,), ``exp`` (k_exp,), ``pose`` view -> (6,), ``colours`` (N, 3) or None."""

    id: np.ndarray
    exp: np.ndarray
    pose: dict[str, np.ndarray] = field(default_factory=dict)
    colours: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def decode(self, model: FaceModel) -> torch.Tensor:
        """The mesh vertices ``(N, 3)`` mm."""
        idc = torch.as_tensor(self.id, dtype=torch.float32, device=model.device)[None]
        exc = torch.as_tensor(self.exp, dtype=torch.float32, device=model.device)[None]
        return model.decode(idc, exc)[0]

    def poses(self, views: tuple[str, ...] = VIEWS) -> torch.Tensor:
        """Poses ``(V, 6)`` in ``views`` order."""
        return torch.as_tensor(np.stack([self.pose[v] for v in views]), dtype=torch.float32)

    def to_json(self) -> dict:
        out = {"id": self.id.tolist(), "exp": self.exp.tolist()}
        if self.pose:
            out["pose"] = {v: np.asarray(p).tolist() for v, p in self.pose.items()}
        if self.colours is not None:
            out["colours"] = np.round(self.colours, 4).tolist()
        out.update(self.extra)
        return out


def save_params(path: str | os.PathLike, params: FaceParams) -> None:
    """Write a params JSON atomically (`check_params` first: never a NaN in the file)."""
    check_params(path, params.id, params.exp, params.pose, params.colours)
    write_json(path, params.to_json())


def load_params(path: str | os.PathLike, model: FaceModel) -> FaceParams:
    """Read and validate a params JSON against ``model``; `MvfError` naming the file on problems."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "params file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise file_error(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise file_error(path, "expected a JSON object with 'id' and 'exp'")

    def vector(key: str, limit: int) -> np.ndarray:
        if key not in data:
            raise file_error(path, f"missing '{key}'")
        try:
            arr = np.asarray(data[key], dtype=np.float32)
        except (TypeError, ValueError):
            raise file_error(path, f"'{key}' must be a list of numbers") from None
        if arr.ndim != 1:
            raise file_error(path, f"'{key}' must be a flat list of numbers")
        if len(arr) > limit:
            raise file_error(path, f"'{key}' has {len(arr)} coefficients; the face model has {limit}")
        return arr

    idc = vector("id", model.n_id)
    exc = vector("exp", model.n_exp)
    pose: dict[str, np.ndarray] = {}
    raw_pose = data.get("pose")
    if raw_pose is not None:
        items = raw_pose.items() if isinstance(raw_pose, dict) else zip(VIEWS, raw_pose)
        for view, p in items:
            if view not in VIEWS:
                raise file_error(path, f"pose view '{view}' is not one of {list(VIEWS)}")
            try:
                arr = np.asarray(p, dtype=np.float32)
            except (TypeError, ValueError):
                raise file_error(path, f"pose '{view}' must be 6 numbers") from None
            if arr.shape != (6,):
                raise file_error(path, f"pose '{view}' must be 6 numbers (f, alpha, beta, gamma, tx, ty)")
            pose[view] = arr
    colours = None
    if data.get("colours") is not None:
        try:
            colours = np.asarray(data["colours"], dtype=np.float32)
        except (TypeError, ValueError):
            raise file_error(path, "'colours' must be N x 3 numbers") from None
        if colours.shape != (model.n_verts, 3):
            raise file_error(path, f"'colours' has shape {colours.shape}; expected ({model.n_verts}, 3)")
    check_params(path, idc, exc, pose, colours)
    extra = {k: v for k, v in data.items() if k not in ("id", "exp", "pose", "colours")}
    return FaceParams(idc, exc, pose, colours, extra)


def random_params(model: FaceModel, seed: int, max_active_exp: int = 3) -> FaceParams:
    """A random face: identity ~ N(0, 1) per mode; 0..max_active_exp expressions with weights in [0, 1]."""
    rng = np.random.default_rng(seed)
    idc = rng.standard_normal(model.n_id).astype(np.float32)
    exc = np.zeros(model.n_exp, np.float32)
    n_active = int(rng.integers(0, max_active_exp + 1))
    active = rng.choice(model.n_exp, size=n_active, replace=False)
    exc[active] = rng.uniform(0.0, 1.0, size=n_active)
    return FaceParams(idc, exc)
