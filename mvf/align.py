"""Procrustes alignment of corresponding point sets and the aligned vertex RMSE.

`procrustes` finds the rotation ``R``, translation ``t`` and (optionally) scale ``s`` minimising
``sum_i |s R p_i + t - q_i|^2`` (Kabsch/Umeyama via SVD, reflections excluded).
"""
from __future__ import annotations

from typing import Literal

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
