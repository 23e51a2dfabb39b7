"""Procrustes alignment of corresponding point sets, the aligned vertex RMSE, and `Similarity`.

`procrustes` finds the rotation ``R``, translation ``t`` and (optionally) scale ``s`` minimising
``sum_i |s R p_i + t - q_i|^2`` (Kabsch/Umeyama via SVD, reflections excluded). `umeyama` is the
same fit for one numpy point set, returned as a `Similarity` (``x -> s R x + t``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

Mode = Literal["rigid", "similarity", "none"]


def procrustes(src: torch.Tensor, dst: torch.Tensor, scale: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best ``dst ~ s R src + t`` for ``(B, N, 3)`` point sets.

    Returns ``R (B, 3, 3)``, ``t (B, 3)``, ``s (B,)`` (ones unless ``scale``). Computed in float64.
    """
    p, q = src.double(), dst.double()
    mp, mq = p.mean(1, keepdim=True), q.mean(1, keepdim=True)
    pc, qc = p - mp, q - mq
    cov = qc.transpose(1, 2) @ pc  # (B, 3, 3) = sum q p^T
    u, sig, vt = torch.linalg.svd(cov)
    d = torch.sign(torch.det(u @ vt))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.ones(p.shape[0], 3, dtype=p.dtype, device=p.device)
    fix[:, 2] = d
    rot = u @ torch.diag_embed(fix) @ vt
    if scale:
        s = (sig * fix).sum(-1) / (pc ** 2).sum((1, 2)).clamp(min=1e-30)
    else:
        s = torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
    t = mq.squeeze(1) - s[:, None] * (mp @ rot.transpose(1, 2)).squeeze(1)
    return rot.to(src.dtype), t.to(src.dtype), s.to(src.dtype)


def align(src: torch.Tensor, dst: torch.Tensor, mode: Mode = "rigid") -> torch.Tensor:
    """``src (B, N, 3)`` moved onto ``dst`` by the best rigid / similarity transform."""
    if mode == "none":
        return src
    rot, t, s = procrustes(src, dst, scale=mode == "similarity")
    return s[:, None, None] * (src @ rot.transpose(1, 2)) + t[:, None]


def aligned_rmse(pred: torch.Tensor, gt: torch.Tensor, vertex_ids: torch.Tensor | None = None,
                 mode: Mode = "rigid") -> torch.Tensor:
    """Per-sample vertex RMSE (mm) after aligning ``pred`` to ``gt`` on ``vertex_ids``.

    Args: pred, gt ``(B, N, 3)`` mm; vertex_ids ``(M,)`` or None (all). Returns ``(B,)``.
    """
    if vertex_ids is not None:
        pred, gt = pred.index_select(1, vertex_ids), gt.index_select(1, vertex_ids)
    moved = align(pred, gt, mode)
    return ((moved - gt) ** 2).sum(-1).mean(-1).sqrt()


@dataclass
class Similarity:
    """``x -> s R x + t``. s: scale; R: ``(3, 3)`` rotation; t: ``(3,)`` (numpy, float64)."""

    s: float = 1.0
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform ``(..., 3)`` points."""
        return self.s * np.asarray(x) @ self.R.T + self.t

    def compose(self, inner: "Similarity") -> "Similarity":
        """``self o inner`` (apply ``inner`` first)."""
        return Similarity(self.s * inner.s, self.R @ inner.R, self.s * self.R @ inner.t + self.t)

    def inverse(self) -> "Similarity":
        return Similarity(1.0 / self.s, self.R.T, -(self.R.T @ self.t) / self.s)

    def to_dict(self) -> dict:
        return {"scale": float(self.s), "rotation": self.R.tolist(), "translation": self.t.tolist()}


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Similarity:
    """Least-squares similarity mapping ``src (N, 3)`` onto ``dst (N, 3)`` (`procrustes`, float64).

    Raises `ValueError` when the points are degenerate (fewer than 3, collinear or coincident).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError("umeyama needs two (N >= 3, 3) point sets of the same shape")
    a, b = src - src.mean(0), dst - dst.mean(0)
    sig = np.linalg.svd(b.T @ a / len(src), compute_uv=False)
    if (a * a).sum() / len(src) <= 1e-24 or sig[1] <= 1e-12 * max(sig[0], 1e-300):
        raise ValueError("degenerate (collinear or coincident) points")
    rot, t, s = procrustes(torch.from_numpy(src)[None], torch.from_numpy(dst)[None], scale=with_scale)
    return Similarity(float(s[0]), rot[0].numpy(), t[0].numpy())
