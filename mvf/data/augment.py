"""Training augmentation that keeps the labels true.

Geometric: a similarity about the image centre ``c`` (scale ``s``, in-plane rotation ``theta``
anticlockwise as seen in the image, shift ``t`` px) maps pixel positions
``p' = s M (p - c) + c + t`` with ``M = [[cos, sin], [-sin, cos]]`` (image axes, v down). The
image and masks are resampled; landmarks map the same way; the weak-perspective pose follows
exactly: ``f' = s f``, roll ``gamma' = gamma + theta``, ``(tx', ty') = s M ((tx, ty) - c) + c + t``
(see `renderer.camera`). Landmarks pushed out of the image become invisible.

Photometric: brightness, contrast, saturation, hue, Gaussian blur and Gaussian noise.

Every random number comes from the ``torch.Generator`` passed in, so a seed reproduces a draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mvf.data.background import gaussian_blur
from mvf.errors import MvfError


@dataclass
class AugmentConfig:
    """Augmentation ranges. Factors are drawn uniformly in ``1 +- value``; set 0 to disable."""

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.03  # fraction of a full hue turn
    p_blur: float = 0.3
    blur_sigma: list[float] = field(default_factory=lambda: [0.3, 1.2])  # px
    p_noise: float = 0.3
    noise_std: list[float] = field(default_factory=lambda: [0.005, 0.03])
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    shift: float = 0.05  # max shift, fraction of the image side
    rotate: float = 0.0  # max in-plane rotation, degrees (changes the roll)
    same_for_views: bool = False  # one draw for every view instead of one per view

    def __post_init__(self) -> None:
        for name in ("blur_sigma", "noise_std", "scale"):
            r = getattr(self, name)
            if len(r) != 2 or not 0 <= r[0] <= r[1]:
                raise MvfError(f"config key 'augment.{name}': expected [low, high] with 0 <= low <= high, got {r}")
        if self.scale[0] <= 0:
            raise MvfError("config key 'augment.scale': must be positive")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen)) < p


@dataclass
class Similarity:
    """``p' = s M(theta) (p - c) + c + t`` in pixels (see the module docstring)."""

    scale: float = 1.0
    theta: float = 0.0  # radians, anticlockwise in the image
    shift: tuple[float, float] = (0.0, 0.0)

    def matrix(self) -> torch.Tensor:
        c, s = math.cos(self.theta), math.sin(self.theta)
        return self.scale * torch.tensor([[c, s], [-s, c]])

    def apply(self, points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Map ``(..., 2)`` pixel positions."""
        h, w = size
        centre = points.new_tensor([w / 2.0, h / 2.0])
        m = self.matrix().to(points)
        return (points - centre) @ m.T + centre + points.new_tensor(self.shift)

    def apply_pose(self, pose: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The pose ``(6,)`` that projects the same mesh onto the transformed image."""
        out = pose.clone()
        out[0] = pose[0] * self.scale
        out[3] = pose[3] + self.theta
        out[4:6] = self.apply(pose[4:6], size)
        return out

    def warp(self, image: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Resample ``(C, H, W)`` so that content at ``p`` moves to ``p'`` (zeros outside)."""
        c, h, w = image.shape
        ys = torch.arange(h, dtype=image.dtype) + 0.5
        xs = torch.arange(w, dtype=image.dtype) + 0.5
        out_pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # (H, W, 2) as (u, v)
        centre = out_pts.new_tensor([w / 2.0, h / 2.0])
        m = self.matrix().to(image.dtype)
        src = (out_pts - centre - out_pts.new_tensor(self.shift)) @ torch.linalg.inv(m).T + centre
        grid = torch.stack([2 * src[..., 0] / w - 1, 2 * src[..., 1] / h - 1], -1)[None]
        return F.grid_sample(image[None], grid.to(image.device), mode=mode, padding_mode="zeros",
                             align_corners=False)[0]


def sample_similarity(cfg: AugmentConfig, gen: torch.Generator, size: tuple[int, int]) -> Similarity:
    """Draw a `Similarity` from the config's scale, rotation and shift ranges."""
    h, w = size
    s = _uniform(gen, *cfg.scale)
    theta = math.radians(_uniform(gen, -cfg.rotate, cfg.rotate))
    t = (_uniform(gen, -cfg.shift, cfg.shift) * w, _uniform(gen, -cfg.shift, cfg.shift) * h)
    return Similarity(s, theta, t)


def photometric(image: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter, blur and noise of one ``(3, H, W)`` image in [0, 1]."""
    img = image * _uniform(gen, 1 - cfg.brightness, 1 + cfg.brightness)
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = (img - grey.mean()) * _uniform(gen, 1 - cfg.contrast, 1 + cfg.contrast) + grey.mean()
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = grey + (img - grey) * _uniform(gen, 1 - cfg.saturation, 1 + cfg.saturation)
    if cfg.hue > 0:
        img = _rotate_hue(img, 2 * math.pi * _uniform(gen, -cfg.hue, cfg.hue))
    if _chance(gen, cfg.p_blur):
        img = gaussian_blur(img[None], _uniform(gen, *cfg.blur_sigma))[0]
    if _chance(gen, cfg.p_noise):
        img = img + _uniform(gen, *cfg.noise_std) * torch.randn(img.shape, generator=gen).to(img)
    return img.clamp(0.0, 1.0)


def _rotate_hue(img: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate the chroma of ``(3, H, W)`` RGB by ``angle`` radians in YIQ space."""
    to_yiq = img.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(angle), math.sin(angle)
    rot = img.new_tensor([[1, 0, 0], [0, c, -s], [0, s, c]])
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,jhw->ihw", m, img)


def augment_sample(sample: dict, cfg: AugmentConfig, gen: torch.Generator,
                   photometric_too: bool = True) -> dict:
    """Augment a dataset sample in a label-preserving way; returns a new dict.

    ``sample`` holds ``images`` ``(V, 3, H, W)`` and optionally ``landmarks`` ``(V, 68, 2)``,
    ``landmark_visible`` ``(V, 68)``, ``masks`` ``(V, H, W)`` and ``pose`` ``(V, 6)``; other
    entries pass through unchanged.
    """
    out = dict(sample)
    images = sample["images"]
    n_views, _, h, w = images.shape
    size = (h, w)
    new_images, new_masks, new_lm, new_vis, new_pose = [], [], [], [], []
    shared = sample_similarity(cfg, gen, size) if cfg.same_for_views else None
    for v in range(n_views):
        sim = shared or sample_similarity(cfg, gen, size)
        img = sim.warp(images[v])
        new_images.append(photometric(img, cfg, gen) if photometric_too else img)
        if "masks" in sample:
            m = sim.warp(sample["masks"][v][None].to(images.dtype), mode="nearest")[0]
            new_masks.append(m.to(sample["masks"].dtype))
        if "landmarks" in sample:
            lm = sim.apply(sample["landmarks"][v], size)
            new_lm.append(lm)
            if "landmark_visible" in sample:
                inside = (lm[:, 0] >= 0) & (lm[:, 0] < w) & (lm[:, 1] >= 0) & (lm[:, 1] < h)
                vis = sample["landmark_visible"][v]
                new_vis.append((vis.bool() & inside).to(vis.dtype))
        if "pose" in sample:
            new_pose.append(sim.apply_pose(sample["pose"][v], size))
    out["images"] = torch.stack(new_images)
    if new_masks:
        out["masks"] = torch.stack(new_masks)
    if new_lm:
        out["landmarks"] = torch.stack(new_lm)
    if new_vis:
        out["landmark_visible"] = torch.stack(new_vis)
    if new_pose:
        out["pose"] = torch.stack(new_pose)
    return out
