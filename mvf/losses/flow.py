"""Differentiable optical flow F for the MVF-Net alignment loss
``L_align = |F(I_B, I_A→B)| + |F(I_A→B, I_B)|``.

Convention: ``flow = F(img1, img2)`` is ``(N, 2, H, W)`` in pixels (channel 0 = u along x/right,
channel 1 = v along y/down) with ``img1(p) ≈ img2(p + flow(p))``, i.e.
``warp_image(img2, flow) ≈ img1``.

Methods:
- ``"pyramid_lk"`` (default, no weights): coarse-to-fine Lucas-Kanade unrolled in torch
  (`mvf.losses.flow_lk`), differentiable with respect to both images, mask-aware.
- ``"raft"``: torchvision RAFT (small/large) loaded from a local weights file, frozen but
  differentiable with respect to its inputs; the mask is ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mvf.errors import MvfError
from mvf.losses.flow_lk import base_grid, pyramid_lk, sample_at
from mvf.losses.flow_raft import VARIANTS as RAFT_VARIANTS
from mvf.losses.flow_raft import RaftFlow

METHODS = ("pyramid_lk", "raft")


@dataclass
class FlowConfig:
    """Flow estimator settings (YAML key ``flow``).

    pyramid_lk knobs (defaults chosen for 128-224 px faces on CPU; see ``tools/bench_flow.py``):
    - ``levels``: pyramid levels the flow is estimated on, each half the size of the previous
      (levels whose shorter side would drop below 8 px are skipped). 4 levels from half
      resolution reach 1/16: displacements of 20+ px are recovered.
    - ``finest_level``: the finest level estimated (0 = full resolution, 1 = half, ...); the
      flow is bilinearly upsampled from there. 1 keeps ~0.05-0.15 px accuracy on smooth images
      at about a third of the cost of 0; use 2 at 224 px and above to halve the time again.
    - ``iterations``: warp + solve steps per level.
    - ``window``: Lucas-Kanade window side in pixels of each level, a multiple of 3: the window
      is 3x3 cells of ``window // 3`` pixels sliding by one cell, and the update is solved per
      cell and interpolated (3 = dense per-pixel 3x3 windows).
    - ``smoothness``: weight pulling the flow towards its window mean, relative to the level's
      mean squared image gradient. It fills masked, flat and out-of-image areas from the
      neighbourhood and damps the step; smaller is sharper but less stable.
    raft knobs: ``raft_weights`` (a local torchvision RAFT state dict, required; never
    downloaded), ``raft_variant`` ("small" | "large"), ``raft_updates`` (recurrent refinements).
    """

    method: str = "pyramid_lk"
    levels: int = 4
    finest_level: int = 1
    iterations: int = 3
    window: int = 12
    smoothness: float = 0.05
    raft_weights: str | None = None
    raft_variant: str = "small"
    raft_updates: int = 12

    def validate(self) -> None:
        """Raise `MvfError` naming the bad key."""
        if self.method not in METHODS:
            raise MvfError(f"config key 'flow.method': {self.method!r} is not one of {list(METHODS)}")
        for key in ("levels", "iterations", "window", "raft_updates"):
            if getattr(self, key) < 1:
                raise MvfError(f"config key 'flow.{key}': must be >= 1, got {getattr(self, key)}")
        if self.finest_level < 0:
            raise MvfError(f"config key 'flow.finest_level': must be >= 0, got {self.finest_level}")
        if self.window < 3 or self.window % 3:
            raise MvfError(f"config key 'flow.window': must be a multiple of 3 (3x3 cells), "
                           f"got {self.window}")
        if not self.smoothness > 0:
            raise MvfError(f"config key 'flow.smoothness': must be > 0, got {self.smoothness}")
        if self.method == "raft":
            if self.raft_variant not in RAFT_VARIANTS:
                raise MvfError(f"config key 'flow.raft_variant': {self.raft_variant!r} is not one "
                               f"of {list(RAFT_VARIANTS)}")
            if not self.raft_weights:
                raise MvfError("config key 'flow.raft_weights': required when flow.method is "
                               "'raft' (a local torchvision RAFT .pth; never downloaded)")


class FlowEstimator(torch.nn.Module):
    """Optical flow ``F(img1, img2, mask) -> (N, 2, H, W)`` pixels, differentiable in both images.

    Has no trainable parameters (RAFT is frozen); move it with ``.to(device)`` for RAFT.
    """

    def __init__(self, cfg: FlowConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or FlowConfig()
        cfg.validate()
        self.raft = None
        if cfg.method == "raft":
            self.raft = RaftFlow(cfg.raft_weights, cfg.raft_variant, cfg.raft_updates)

    def forward(self, img1: Tensor, img2: Tensor, mask: Tensor | None = None) -> Tensor:
        """img1, img2: ``(N, 3, H, W)`` in [0, 1]; mask: optional ``(N, 1, H, W)`` weights in [0, 1]
        of valid pixels (the data term counts only there; other pixels take their flow from the
        neighbourhood; RAFT ignores it). Returns flow ``(N, 2, H, W)`` in pixels with
        ``img1(p) ≈ img2(p + flow(p))``."""
        if img1.dim() != 4 or img1.shape != img2.shape or img1.shape[1] != 3:
            raise ValueError(f"flow: expected two (N, 3, H, W) images, got {tuple(img1.shape)} "
                             f"and {tuple(img2.shape)}")
        n, _, h, w = img1.shape
        if mask is not None and tuple(mask.shape) != (n, 1, h, w):
            raise ValueError(f"flow: expected mask (N, 1, H, W) matching {tuple(img1.shape)}, "
                             f"got {tuple(mask.shape)}")
        if self.raft is not None:
            return self.raft(img1, img2)
        c = self.cfg
        return pyramid_lk(img1, img2, mask, c.levels, c.finest_level, c.iterations, c.window,
                          c.smoothness)


def build_flow(cfg: FlowConfig | None = None) -> FlowEstimator:
    """The flow estimator ``cfg`` describes (default: pyramid_lk); `MvfError` on bad settings."""
    return FlowEstimator(cfg)


def warp_image(img: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp ``img`` ``(N, C, H, W)`` by ``flow`` ``(N, 2, H, W)`` pixels:
    ``out(p) = img(p + flow(p))`` (bilinear, ``grid_sample`` with ``align_corners=False``,
    border replicated outside the image)."""
    n, _, h, w = flow.shape
    return sample_at(img, base_grid(n, h, w, flow) + flow)


def flow_magnitude_loss(flow: Tensor, mask: Tensor | None = None, eps: float = 1e-3) -> Tensor:
    """Mean flow length in pixels over ``mask``: ``Σ m·(sqrt(|flow|² + eps²) - eps) / Σ m``.

    flow: ``(N, 2, H, W)``; mask: optional ``(N, 1, H, W)`` weights. The ``eps`` (pixels) keeps the
    gradient finite at zero flow. Normalised by the mask area over the whole batch, so a smaller
    mask does not lower the loss by itself. Returns a scalar (0 for an empty mask).
    """
    mag = torch.sqrt((flow * flow).sum(1, keepdim=True) + eps * eps) - eps
    if mask is None:
        return mag.mean()
    m = mask.to(mag.dtype)
    return (mag * m).sum() / m.sum().clamp_min(1e-6)


def flow_to_rgb(flow: Tensor, max_magnitude: float | None = None) -> Tensor:
    """Colour-wheel picture of ``flow`` ``(N, 2, H, W)`` -> ``(N, H, W, 3)`` float in [0, 1].

    Hue is the direction (right = red, down = yellow-green, left = cyan, up = violet), saturation
    the length relative to ``max_magnitude`` (default: the largest length in each image); zero
    flow is white.
    """
    f = flow.detach().float()
    mag = f.norm(dim=1)
    if max_magnitude is None:
        top = mag.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    else:
        top = torch.full_like(mag[:, :1, :1], float(max_magnitude))
    sat = (mag / top).clamp(0.0, 1.0)
    hue = (torch.atan2(f[:, 1], f[:, 0]) / (2 * math.pi)) % 1.0
    k = (hue.unsqueeze(-1) * 6.0 + f.new_tensor([5.0, 3.0, 1.0])) % 6.0
    rgb_full = 1.0 - (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))  # HSV->RGB with S=V=1
    return (1.0 - sat.unsqueeze(-1) * (1.0 - rgb_full)).clamp(0.0, 1.0)
