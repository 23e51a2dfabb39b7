"""MVF-Net-style face crops and the transform that maps crop pixels back onto the full photo.

The crop follows MVF-Net's released test code (``tools.crop_image``), in float precision:

* box: the bounding box of the 68 landmarks; its centre moved **up** by `VERTICAL_SHIFT`
  (0.12) x the box height, so the forehead gets more room than the neck;
* side: `ENLARGE` (1.5) x the larger box side, square;
* where the square leaves the photo it is padded, with black (``pad="constant"``, MVF-Net's
  choice) or by repeating the border pixels (``pad="edge"``);
* the square is resampled to ``out_size`` x ``out_size`` (224 by default) with PIL's bicubic
  filter (which low-pass filters when shrinking; from large photos after a box reduce, see
  `REDUCING_GAP`).

Frames (docs/conventions.md): pixel ``(i, j)`` is centred at ``(i + 0.5, j + 0.5)`` in both the
full photo and the crop. A full-photo point ``p`` lands at ``(p - offset) * scale`` in the crop,
where ``offset`` is the square's top-left corner (full-photo pixels, may be negative) and
``scale = out_size / side`` (crop pixels per photo pixel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mvf.errors import MvfError

ENLARGE = 1.5         # square side / larger side of the landmark bounding box
VERTICAL_SHIFT = 0.12  # box centre moved up by this fraction of the box height
PAD_MODES = ("constant", "edge")
# Large shrinks go in two steps, PIL's box reduce by an integer factor then the filter, when the
# factor exceeds this: as exact to the eye (PIL's docs), many times faster on large photos.
REDUCING_GAP = 3.0


def shrink_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 resized to ``size = (w, h)`` px: bilinear, antialiased, in two steps
    (`REDUCING_GAP`) for large shrinks; uint8 out, so no float copy of a large photo is made."""
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP))


@dataclass(frozen=True)
class CropTransform:
    """Similarity (scale + translation) from full-photo pixels to crop pixels.

    Attributes:
        scale: crop pixels per full-photo pixel.
        offset: ``(x, y)`` full-photo position of the crop's top-left corner, pixels.
        out_size: side of the square crop, pixels.
    """

    scale: float
    offset: tuple[float, float]
    out_size: int

    # -- points
    def to_crop(self, points):
        """Full-photo pixels -> crop pixels. ``(..., 2)`` numpy array or torch tensor."""
        return (points - self._offset_like(points)) * self.scale

    def to_full(self, points):
        """Crop pixels -> full-photo pixels. ``(..., 2)`` numpy array or torch tensor."""
        return points / self.scale + self._offset_like(points)

    # -- weak-perspective poses (f, pitch, yaw, roll, tx, ty), see renderer.camera
    def pose_to_full(self, pose):
        """A pose predicted on the crop -> the same projection on the full photo.

        ``f' = f / scale``, ``t' = t / scale + offset``, angles unchanged. ``(..., 6)``.
        """
        out = pose.clone() if hasattr(pose, "clone") else np.array(pose, dtype=np.float64, copy=True)
        out[..., 0] = pose[..., 0] / self.scale
        out[..., 4:6] = pose[..., 4:6] / self.scale + self._offset_like(pose[..., 4:6])
        return out

    def pose_to_crop(self, pose):
        """Inverse of `pose_to_full`: ``f' = f * scale``, ``t' = (t - offset) * scale``."""
        out = pose.clone() if hasattr(pose, "clone") else np.array(pose, dtype=np.float64, copy=True)
        out[..., 0] = pose[..., 0] * self.scale
        out[..., 4:6] = (pose[..., 4:6] - self._offset_like(pose[..., 4:6])) * self.scale
        return out

    def _offset_like(self, ref):
        if hasattr(ref, "new_tensor"):  # torch, on ref's device and dtype
            return ref.new_tensor(self.offset)
        return np.asarray(self.offset, dtype=np.float64)

    # -- serialisation (params.json)
    def to_dict(self) -> dict:
        return {"scale": float(self.scale), "offset": [float(self.offset[0]), float(self.offset[1])],
                "out_size": int(self.out_size)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "crop") -> "CropTransform":
        """Inverse of `to_dict`; `MvfError` naming ``source`` on missing or bad keys."""
        try:
            scale = float(d["scale"])
            ox, oy = (float(v) for v in d["offset"])
            out_size = int(d["out_size"])
        except (KeyError, TypeError, ValueError):
            raise MvfError(f"{source}: bad crop transform {d!r} (need scale, offset [x, y], out_size)") from None
        if not (math.isfinite(scale) and scale > 0 and out_size > 0 and math.isfinite(ox) and math.isfinite(oy)):
            raise MvfError(f"{source}: bad crop transform {d!r}")
        return cls(scale, (ox, oy), out_size)

    @classmethod
    def identity(cls, out_size: int) -> "CropTransform":
        return cls(1.0, (0.0, 0.0), out_size)


def crop_box(points: np.ndarray, factor: float = ENLARGE,
             shift: float = VERTICAL_SHIFT) -> tuple[float, float, float]:
    """The square crop box of ``(N, 2)`` landmark pixels -> ``(x0, y0, side)`` in photo pixels."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    if p.ndim != 2 or len(p) == 0 or not np.isfinite(p).all():
        raise ValueError("crop_box needs finite (N, 2) points")
    lo, hi = p.min(0), p.max(0)
    w, h = hi - lo
    side = factor * max(w, h)
    if side <= 0:
        raise ValueError("landmarks are degenerate (zero extent)")
    cx = 0.5 * (lo[0] + hi[0])
    cy = 0.5 * (lo[1] + hi[1]) - shift * h
    return cx - side / 2.0, cy - side / 2.0, side


def crop_image(image: np.ndarray, landmarks, out_size: int = 224, factor: float = ENLARGE,
               shift: float = VERTICAL_SHIFT, pad: str = "constant") -> tuple[np.ndarray, CropTransform]:
    """Cut the MVF-Net-style square around the landmarks and resize it.

    Args:
        image: ``(H, W, 3)`` uint8 RGB photo.
        landmarks: ``(68, 2)`` pixels in the photo (or a `mvf.recon.detect.Landmarks68`).
        out_size: side of the output crop in pixels. factor, shift: see module docstring.
        pad: ``"constant"`` (black) or ``"edge"`` where the square leaves the photo.
    Returns:
        ``(crop, transform)``: ``(out_size, out_size, 3)`` uint8 and the `CropTransform` with
        ``crop_point = (photo_point - offset) * scale``.
    """
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    pts = getattr(landmarks, "points", landmarks)
    x0, y0, side = crop_box(pts, factor, shift)
    h, w = img.shape[:2]
    # Integer window around the box with a margin for the resampling filter's support.
    margin = int(math.ceil(2.0 * side / out_size)) + 2
    ix0, iy0 = int(math.floor(x0)) - margin, int(math.floor(y0)) - margin
    ix1, iy1 = int(math.ceil(x0 + side)) + margin, int(math.ceil(y0 + side)) + margin
    sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
    pads = ((max(0, -iy0), max(0, iy1 - h)), (max(0, -ix0), max(0, ix1 - w)), (0, 0))
    if sx1 > sx0 and sy1 > sy0:
        sub = img[sy0:sy1, sx0:sx1]
        if not any(any(p) for p in pads):
            window = sub  # inside the photo: no padded copy
        else:
            window = np.pad(sub, pads, mode=pad) if pad == "edge" else np.pad(sub, pads)
    else:  # the box misses the photo entirely
        window = np.zeros((iy1 - iy0, ix1 - ix0, 3), np.uint8)
    box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    crop = Image.fromarray(np.ascontiguousarray(window)).resize(
        (out_size, out_size), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP)
    return np.asarray(crop), CropTransform(out_size / side, (x0, y0), int(out_size))
