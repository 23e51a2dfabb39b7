"""Random image backgrounds: plain colour, gradient, smooth clutter, or a cut of another face.

Every function draws from the generator it is given, so a subject's backgrounds depend on its
own seed only. Images are ``(H, W, 3)`` float32 in [0, 1].
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("solid", "gradient", "noise", "face")


def random_colour(rng: np.random.Generator, sat: tuple[float, float] = (0.0, 0.55),
                  val: tuple[float, float] = (0.08, 0.92)) -> np.ndarray:
    """A random RGB colour ``(3,)`` from hue, saturation and value ranges."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val)), np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, ...] = (3, 6, 12, 24),
                 decay: float = 0.6) -> np.ndarray:
    """Multi-octave smooth noise ``(size, size)``, zero-mean and about unit std."""
    out = torch.zeros(1, 1, size, size)
    total = 0.0
    for i, c in enumerate(cells):
        grid = torch.from_numpy(rng.normal(size=(1, 1, c + 1, c + 1)).astype(np.float32))
        amp = decay ** i
        out += amp * F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
        total += amp * amp
    return (out[0, 0] / np.sqrt(total)).numpy()


def _ramp(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear ramp ``(size, size)`` in [0, 1] along a random direction."""
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    r = np.cos(a) * xx + np.sin(a) * yy
    return (r - r.min()) / max(float(np.ptp(r)), 1e-6)


def solid(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain wall: one colour with a faint low-frequency shading."""
    c = random_colour(rng)
    shade = 1.0 + 0.06 * smooth_noise(rng, size, cells=(2, 4))
    return np.clip(c[None, None] * shade[..., None], 0, 1).astype(np.float32)


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient between two colours, sometimes with a vignette."""
    c0, c1 = random_colour(rng), random_colour(rng)
    t = _ramp(rng, size)[..., None]
    img = c0 * (1 - t) + c1 * t
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        img = img * (1.0 - rng.uniform(0.2, 0.6) * (xx ** 2 + yy ** 2))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth coloured clutter: three colours mixed by smooth noise fields, plus a few blobs."""
    cols = [random_colour(rng, sat=(0.0, 0.7), val=(0.05, 0.95)) for _ in range(3)]
    finest = int(rng.choice([12, 24, 48])) * size // 64
    cells = tuple(c for c in (2, 4, 8, 16, 32, 64) if c <= max(finest, 2))
    w = np.stack([smooth_noise(rng, size, cells=cells) * rng.uniform(1.0, 3.0) for _ in cols], -1)
    w = np.exp(w - w.max(-1, keepdims=True))
    img = (w / w.sum(-1, keepdims=True)) @ np.stack(cols)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(int(rng.integers(0, 5))):  # soft-edged ellipses: out-of-focus objects
        cx, cy, rx, ry = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        alpha = np.clip((1.0 - d) * rng.uniform(2, 8), 0, 1)[..., None]
        img = img * (1 - alpha) + random_colour(rng) * alpha
    return np.clip(img, 0, 1).astype(np.float32)


def face_cut(rng: np.random.Generator, size: int, face: np.ndarray) -> np.ndarray:
    """A defocused, zoomed random cut of another face rendering ``face`` ``(h, w, 3)``."""
    src = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None]
    zoom = rng.uniform(1.0, 1.8)
    flip = rng.random() < 0.5
    # random crop window (normalised) of side 1/zoom, then resample to size
    side = 1.0 / zoom
    x0, y0 = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
    lin = torch.linspace(0.5 / size, 1 - 0.5 / size, size)
    gx = (x0 + side * lin) * 2 - 1
    gy = (y0 + side * lin) * 2 - 1
    if flip:
        gx = gx.flip(0)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = gaussian_blur(out, rng.uniform(0.8, 3.0) * size / 224.0)
    tint = 1.0 + rng.normal(0, 0.08, size=3).astype(np.float32)
    return np.clip(out[0].permute(1, 2, 0).numpy() * tint * rng.uniform(0.6, 1.0), 0, 1).astype(np.float32)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(..., H, W)`` with edge replication; identity for sigma < 0.05.

    A weighted sum of shifted copies (cheap for the small sigmas used here).
    """
    if sigma < 0.05:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).tolist()
    h, w = img.shape[-2:]
    pad = F.pad(img.reshape(-1, 1, h, w), (r, r, r, r), mode="replicate")
    rows = sum(k[i] * pad[..., i:i + w] for i in range(2 * r + 1))
    out = sum(k[i] * rows[..., i:i + h, :] for i in range(2 * r + 1))
    return out.reshape(img.shape)


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(h, w, 3)`` to ``(size, size, 3)``."""
    if img.shape[0] == size:
        return img
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).numpy()


WORK_SIZE = 64  # smooth backgrounds are drawn at this resolution, then upsampled


def make_background(kind: str, rng: np.random.Generator, size: int,
                    face: np.ndarray | None = None) -> np.ndarray:
    """A background of ``kind`` (one of `KINDS`) at ``size`` x ``size``; ``face`` (a rendering,
    any size) is required for ``"face"``."""
    work = min(size, WORK_SIZE)
    if kind == "solid":
        img = solid(rng, work)
    elif kind == "gradient":
        img = gradient(rng, work)
    elif kind == "noise":
        img = noise(rng, work)
    elif kind == "face":
        if face is None:
            raise ValueError("a 'face' background needs a face rendering")
        work = min(size, face.shape[0])
        img = face_cut(rng, work, face)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return np.clip(_upsample(img.astype(np.float32), size), 0.0, 1.0)
