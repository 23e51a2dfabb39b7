"""A landmark detector's measured error model: per-point, per-yaw-bin bias and low-rank noise.

The calibration (`mvf.recon.calibrate`) measures, on renders with exact geometry, the residuals
``r = (detected - projected) / f`` (model mm: px divided by the view's scale f px/mm, image
axes) of every detector point against its calibrated `LandmarkSet` embedding projected with the
true shape and pose (contour search included). `build_error_model` summarises them per bin of the
view's yaw (the set's bins):

* ``bias`` ``(Y, K, 2)`` mm: the mean residual (the detector's systematic offset in that bin);
* ``basis`` ``(Y, R, 2K)`` mm: the leading principal components of the centred residuals, each
  scaled by its standard deviation (the structured part: points that move together);
* ``sigma`` ``(Y, K)`` mm: per point and axis, the standard deviation left after the low-rank part.

`DetectorErrorModel.sample` draws ``bias + z @ basis + sigma * e`` (z, e standard normal), so
simulated detections ``projected + f * sample`` have the calibration's mean, covariance (up to
rank R plus the diagonal) and per-point spread. Deterministic for a ``torch.Generator``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

PREFIX = "error_"  # array names in the landmark-set asset
DEFAULT_RANK = 12
MIN_VIEWS_PER_BIN = 8


@dataclass
class DetectorErrorModel:
    """Residual model of K detector points (module docstring). yaw_edges_deg ``(Y - 1,)``."""

    yaw_edges_deg: Tensor
    bias: Tensor
    basis: Tensor
    sigma: Tensor
    meta: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(self.bias.shape[1])

    def to(self, device: torch.device | str) -> "DetectorErrorModel":
        return DetectorErrorModel(self.yaw_edges_deg.to(device), self.bias.to(device), self.basis.to(device),
                                  self.sigma.to(device), dict(self.meta))

    def bins(self, yaw: Tensor) -> Tensor:
        """Yaw bin of each view: ``(...)`` rad -> ``(...)`` long (the `LandmarkProjector` rule)."""
        return torch.bucketize(yaw.contiguous(), torch.deg2rad(self.yaw_edges_deg.to(yaw)))

    def sample(self, yaw: Tensor, generator: torch.Generator | None = None, scale: float = 1.0) -> Tensor:
        """Residuals ``(..., K, 2)`` mm for views of yaw ``(...)`` rad (multiply by f for px).

        ``scale`` multiplies the random part (0: the bias alone)."""
        b = self.bins(yaw)
        bias, basis, sigma = self.bias.to(yaw)[b], self.basis.to(yaw)[b], self.sigma.to(yaw)[b]
        z = torch.randn(*yaw.shape, basis.shape[-2], generator=generator, device=yaw.device, dtype=yaw.dtype)
        e = torch.randn(*yaw.shape, self.n_points, 2, generator=generator, device=yaw.device, dtype=yaw.dtype)
        low = (z[..., None, :] @ basis)[..., 0, :].reshape(*yaw.shape, self.n_points, 2)
        return bias + scale * (low + sigma[..., None] * e)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the asset ``.npz`` (names prefixed `PREFIX`)."""
        return {PREFIX + "yaw_edges_deg": self.yaw_edges_deg.numpy().astype(np.float32),
                PREFIX + "bias": self.bias.numpy().astype(np.float32),
                PREFIX + "basis": self.basis.numpy().astype(np.float32),
                PREFIX + "sigma": self.sigma.numpy().astype(np.float32),
                PREFIX + "meta_json": np.asarray(json.dumps(self.meta))}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "DetectorErrorModel | None":
        """Inverse of `to_arrays`; None when the arrays hold no error model."""
        if PREFIX + "bias" not in arrays:
            return None
        t = {k: torch.as_tensor(np.asarray(arrays[PREFIX + k]), dtype=torch.float32)
             for k in ("yaw_edges_deg", "bias", "basis", "sigma")}
        return cls(**t, meta=json.loads(str(arrays[PREFIX + "meta_json"])))


def build_error_model(residuals: np.ndarray, yaw_deg: np.ndarray, yaw_edges_deg, rank: int = DEFAULT_RANK,
                      clip_mm: float = 10.0, meta: dict | None = None) -> DetectorErrorModel:
    """The error model of residuals ``(n, K, 2)`` mm of ``n`` views with yaws ``(n,)`` degrees.

    Residuals are clipped to ``clip_mm`` per coordinate (gross failures). A bin with fewer than
    `MIN_VIEWS_PER_BIN` views borrows the pooled model. The rank is at most a quarter of a bin's views.
    """
    r = np.clip(np.asarray(residuals, np.float64), -clip_mm, clip_mm)
    n, k, _ = r.shape
    edges = np.asarray(yaw_edges_deg, np.float64)
    bins = np.searchsorted(edges, np.asarray(yaw_deg, np.float64), side="left")
    n_bins = len(edges) + 1

    def summarise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = x.reshape(len(x), -1)
        mu = flat.mean(0)
        c = flat - mu
        rr = max(1, min(rank, len(x) // 4))
        _, s, vt = np.linalg.svd(c, full_matrices=False)
        basis = np.zeros((rank, 2 * k))
        basis[:rr] = (s[:rr, None] / np.sqrt(max(len(x) - 1, 1))) * vt[:rr]
        rest = c - (c @ vt[:rr].T) @ vt[:rr]
        sig = np.sqrt((rest.reshape(len(x), k, 2) ** 2).mean((0, 2)) * len(x) / max(len(x) - 1, 1))
        return mu.reshape(k, 2), basis, sig

    pooled = summarise(r)
    bias, basis, sigma, counts = [], [], [], []
    for bi in range(n_bins):
        rows = r[bins == bi]
        counts.append(int(len(rows)))
        part = summarise(rows) if len(rows) >= MIN_VIEWS_PER_BIN else pooled
        bias.append(part[0]); basis.append(part[1]); sigma.append(part[2])
    info = dict(meta or {})
    info.update(rank=rank, clip_mm=clip_mm, views_per_bin=counts, n_views=int(n))
    return DetectorErrorModel(torch.from_numpy(edges.astype(np.float32)),
                              torch.from_numpy(np.stack(bias)).float(), torch.from_numpy(np.stack(basis)).float(),
                              torch.from_numpy(np.stack(sigma)).float(), info)
