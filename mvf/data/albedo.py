"""Procedural per-vertex skin albedo with enough texture for photometric and flow losses.

`AlbedoFields.from_model` precomputes, once per face model, per-vertex geometric fields on the
mean shape (mm): lip, brow, lash, cheek, beard, ear and hair-line coordinates placed from the
iBUG landmarks. `sample_albedo` then draws one subject's colours from a generator: a skin tone
from a wide light-to-dark range with an undertone, multi-scale smooth noise evaluated on the
surface (random Fourier features, wavelengths 4-80 mm), darker lips and brows, blush, lashes,
optional hair, stubble, freckles and moles. Colours are ``(Nv, 3)`` float32 in [0, 1] and live on
vertices, so they follow the surface under any identity, expression or pose.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from mvf.data.caps import HoleCaps
from mvf.data.config import AlbedoConfig

# Skin tones from lightest (t = 0) to darkest (t = 1), interpolated linearly.
SKIN_TONES = np.array([
    [0.96, 0.80, 0.71], [0.91, 0.71, 0.59], [0.82, 0.60, 0.46],
    [0.68, 0.47, 0.33], [0.50, 0.33, 0.22], [0.32, 0.20, 0.13],
], np.float32)
HAIR_COLOURS = np.array([
    [0.05, 0.04, 0.035], [0.13, 0.08, 0.05], [0.26, 0.16, 0.09], [0.42, 0.29, 0.17],
    [0.68, 0.54, 0.33], [0.45, 0.19, 0.08], [0.50, 0.49, 0.47], [0.76, 0.75, 0.72],
], np.float32)
HAIR_WEIGHTS = np.array([0.26, 0.24, 0.18, 0.1, 0.07, 0.05, 0.06, 0.04])
IRIS_COLOURS = np.array([
    [0.23, 0.13, 0.06], [0.12, 0.07, 0.04], [0.38, 0.28, 0.14], [0.25, 0.35, 0.22],
    [0.30, 0.45, 0.62], [0.45, 0.48, 0.50],
], np.float32)
IRIS_WEIGHTS = np.array([0.35, 0.25, 0.12, 0.08, 0.14, 0.06])



def kd_tree(points: np.ndarray):
    """scipy's cKDTree of ``(N, 3)`` points (scipy.spatial is imported here, on first use: it
    costs every `mvf reconstruct` 0.4 s, and only rendering synthetic faces needs it)."""
    from scipy.spatial import cKDTree

    return cKDTree(points)

def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from points ``(N, D)`` to segments ``(S, D)``: ``(N, S)`` and the parameter t."""
    ab = b - a
    t = np.clip(((p[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None] - closest, axis=-1), t


def _polygon_signed_distance(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed 2D distance ``(N,)`` from points ``(N, 2)`` to a closed polygon ``(M, 2)``, < 0 inside."""
    a, b = poly, np.roll(poly, -1, 0)
    d, _ = _segment_distance(p, a, b)
    dist = d.min(1)
    # even-odd rule
    y, x = p[:, 1:2], p[:, 0:1]
    cond = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    xint = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (b[None, :, 1] - a[None, :, 1] + 1e-12)
    inside = (cond & (x < xint)).sum(1) % 2 == 1
    return np.where(inside, -dist, dist)


@dataclass
class AlbedoFields:
    """Per-vertex geometric fields on the mean shape, each ``(Nv,)`` float32 unless noted."""

    pos: np.ndarray  # (Nv, 3) mean-shape positions, mm
    lips: np.ndarray  # 1 on the lips, 0 away (soft edge)
    brows: np.ndarray  # 1 in the brows
    lashes: np.ndarray  # 1 at the lid margins
    cheeks: np.ndarray  # blush weight
    nose: np.ndarray  # nose-tip redness weight
    beard: np.ndarray  # beard region weight
    ears: np.ndarray  # 1 on the ears
    neck: np.ndarray  # 1 below the jaw
    face_front: np.ndarray  # 1 on the front of the face (freckle area)
    hair_height: np.ndarray  # y minus the base hair line height, mm (hair where > 0)
    hair_angle: np.ndarray  # |angle| round the vertical axis, degrees (0 front, 90 side)
    below_chin: np.ndarray  # mm below the chin (negative above it)
    brow_y: float
    tree: object = None  # scipy cKDTree of ``pos`` for local spot updates

    @classmethod
    def from_model(cls, model) -> "AlbedoFields":
        """Fields for ``model`` (a `FaceModel`), from its mean shape and iBUG landmarks."""
        pos = model.mean.cpu().numpy().astype(np.float64)
        lm = pos[model.landmarks.cpu().numpy()]
        x, y, z = pos[:, 0], pos[:, 1], pos[:, 2]
        front_z = lm[:, 2].min() - 25.0

        lip_sd = _polygon_signed_distance(pos[:, :2], lm[48:60, :2])
        lips = _smoothstep((1.2 - lip_sd) / 2.4) * (z > lm[48:68, 2].min() - 15.0)

        brows = np.zeros(len(pos))
        for ids in (range(17, 22), range(22, 27)):
            pts = lm[list(ids)]
            inner_first = pts if abs(pts[0, 0]) < abs(pts[-1, 0]) else pts[::-1]
            # brow band centred 1.5 mm under the landmarks, 4.5 mm half-height inside, 2 outside
            a, b = inner_first[:-1] - [0, 1.5, 0], inner_first[1:] - [0, 1.5, 0]
            d, t = _segment_distance(pos, a, b)
            k = d.argmin(1)
            frac = (k + t[np.arange(len(pos)), k]) / (len(pts) - 1)
            half = 4.5 - 2.5 * frac
            brows = np.maximum(brows, _smoothstep((half - d.min(1)) / 2.0 + 0.5) * (z > front_z))

        eye_loops = [c.loop for c in _eye_loops(model)]
        lashes = np.zeros(len(pos))
        for loop in eye_loops:
            d = np.linalg.norm(pos[:, None] - pos[loop][None], axis=-1).min(1)
            lashes = np.maximum(lashes, _smoothstep((2.2 - d) / 2.2))

        def blob(centre, radius):
            return np.exp(-((pos - centre) ** 2).sum(-1) / (2.0 * radius ** 2))

        cheek_r = lm[[1, 2, 31, 48]].mean(0) + [0, 0, 8]
        cheek_l = lm[[15, 14, 35, 54]].mean(0) + [0, 0, 8]
        cheeks = np.maximum(blob(cheek_r, 16.0), blob(cheek_l, 16.0))
        nose = blob(lm[30], 9.0)

        nose_base_y = lm[31:36, 1].mean()
        chin_y = lm[8, 1]
        z0 = 20.0  # vertical axis of the head, mm (between the face and the ears)
        angle = np.degrees(np.abs(np.arctan2(x, z - z0)))
        beard = (_smoothstep((nose_base_y - 2.0 - y) / 6.0) * _smoothstep((y - (chin_y - 35.0)) / 10.0)
                 * _smoothstep((78.0 - angle) / 12.0))
        beard = beard * (1.0 - lips)

        ears = ((np.abs(x) > 60.0) & (y > lm[3, 1]) & (y < lm[0, 1] + 16.0) & (z < 24.0)).astype(np.float64)
        neck = _smoothstep((chin_y - 5.0 - y) / 15.0) * (1.0 - beard)
        eye_lm = lm[36:48]
        face_front = (_smoothstep((z - front_z) / 10.0) * (y < lm[17:27, 1].max() + 10.0)
                      * (y > lm[48:60, 1].min() - 5.0) * (1.0 - lips)
                      * (np.linalg.norm(pos[:, None] - eye_lm[None], axis=-1).min(1) > 4.0))

        brow_y = float(lm[17:27, 1].mean())
        hair_height = y - np.interp(angle, [0, 40, 62, 80, 92, 112, 180],
                                    [brow_y, brow_y - 3, brow_y - 18, brow_y - 30, brow_y - 32,
                                     brow_y - 80, brow_y - 120])
        hair_height = np.where(ears > 0, -50.0, hair_height)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        return cls(pos=f32(pos), lips=f32(lips), brows=f32(brows), lashes=f32(lashes),
                   cheeks=f32(cheeks), nose=f32(nose), beard=f32(beard), ears=f32(ears),
                   neck=f32(neck), face_front=f32(face_front), hair_height=f32(hair_height),
                   hair_angle=f32(angle), below_chin=f32(chin_y - y), brow_y=brow_y,
                   tree=kd_tree(pos))


def _eye_loops(model):
    return [c for c in HoleCaps.from_model(model).loops if c.kind == "eye"]


def surface_noise(pos: np.ndarray, rng: np.random.Generator, wavelengths=(80.0, 40.0, 20.0, 10.0, 5.0),
                  waves: int = 6, decay: float = 0.75) -> np.ndarray:
    """Smooth multi-scale noise on points ``(N, 3)`` mm: ``(N,)``, roughly zero-mean, unit std.

    A sum of ``waves`` random plane waves per wavelength with amplitude ``wavelength ** decay``.
    """
    lam = np.repeat(np.asarray(wavelengths, np.float64), waves)
    dirs = rng.normal(size=(len(lam), 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, size=len(lam))
    amp = lam ** decay
    k = (dirs * (2 * np.pi / lam)[:, None]).astype(np.float32)
    out = np.cos(pos.astype(np.float32) @ k.T + phase.astype(np.float32)) @ amp.astype(np.float32)
    return out.astype(np.float64) / np.sqrt((amp * amp).sum() / 2.0)


def _spots(pos: np.ndarray, weight: np.ndarray, count: int, radius: tuple[float, float],
           rng: np.random.Generator, tree=None) -> np.ndarray:
    """Sum of ``count`` Gaussian spots ``(N,)`` centred on vertices drawn with ``weight``."""
    out = np.zeros(len(pos))
    if count <= 0 or weight.sum() <= 0:
        return out
    centres = rng.choice(len(pos), size=count, p=weight / weight.sum())
    radii = rng.uniform(*radius, size=count)
    if tree is None:
        tree = kd_tree(pos)
    for c, r in zip(centres, radii):
        near = np.asarray(tree.query_ball_point(pos[c], 3.5 * r), np.int64)
        out[near] += np.exp(-((pos[near] - pos[c]) ** 2).sum(-1) / (2 * r * r))
    return np.minimum(out, 1.0)


@dataclass
class AlbedoSample:
    """One subject's colours: per-vertex skin ``(Nv, 3)`` and cap colours ``(3,)`` each."""

    colours: np.ndarray
    iris: np.ndarray
    sclera: np.ndarray
    mouth: np.ndarray


def _cloth_colour(rng: np.random.Generator) -> np.ndarray:
    """A garment colour: muted or saturated, dark to light."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.08, 0.9)))


def _pick(rng: np.random.Generator, table: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return table[rng.choice(len(table), p=weights / weights.sum())]


def _saturate(rgb: np.ndarray, s: float) -> np.ndarray:
    grey = rgb.mean(-1, keepdims=True)
    return grey + (rgb - grey) * s


def sample_albedo(fields: AlbedoFields, cfg: AlbedoConfig, rng: np.random.Generator) -> AlbedoSample:
    """Draw one subject's albedo from ``rng`` (see the module docstring)."""
    pos = fields.pos.astype(np.float64)
    n = len(pos)
    t = rng.uniform(*cfg.tone) * (len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    skin = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[i + 1] * (t - i)
    skin = skin * np.array([1 + rng.normal(0, 0.035), 1.0, 1 + rng.normal(0, 0.05)])
    col = np.repeat(skin[None].astype(np.float64), n, 0)

    # multi-scale noise: luminance, redness and a fine pore-scale grain
    lum = surface_noise(pos, rng)
    red = surface_noise(pos, rng, wavelengths=(60.0, 25.0, 10.0))
    grain = surface_noise(pos, rng, wavelengths=(6.0, 4.0), waves=8, decay=0.0)
    col *= (1.0 + cfg.noise * (0.06 * lum + 0.02 * grain))[:, None]
    col *= (1.0 + cfg.noise * 0.04 * red[:, None] * np.array([1.0, -0.6, -0.6]))

    # regions
    redden = np.array([1.08, 0.88, 0.88])
    col *= 1.0 + (redden - 1.0) * (rng.uniform(*cfg.blush) * fields.cheeks + 0.5 * fields.nose
                                    + 0.6 * fields.ears)[:, None]
    col *= (1.0 - 0.08 * fields.neck)[:, None]
    lip_col = skin * np.array([0.80, 0.55, 0.57]) * rng.uniform(0.85, 1.05)
    lip_w = rng.uniform(*cfg.lips) * fields.lips
    col = col * (1 - lip_w[:, None]) + lip_col * (1.0 + 0.04 * lum[:, None]) * lip_w[:, None]

    fine = surface_noise(pos, rng, wavelengths=(5.0, 3.0), waves=8, decay=0.0)
    hair_col = _pick(rng, HAIR_COLOURS, HAIR_WEIGHTS) * rng.uniform(0.85, 1.15)
    brow_col = np.minimum(hair_col, skin * 0.5) if hair_col.mean() > 0.4 else hair_col
    brow_w = rng.uniform(*cfg.brows) * fields.brows * np.clip(0.9 + 0.12 * fine, 0, 1)
    col = col * (1 - brow_w[:, None]) + brow_col * brow_w[:, None]
    col *= (1.0 - rng.uniform(0.3, 0.6) * fields.lashes)[:, None]

    if rng.random() < cfg.p_beard:  # stubble: darker, desaturated, grainy
        density = rng.uniform(0.15, 0.55)
        w = density * fields.beard * np.clip(0.8 + 0.2 * fine, 0, 1)
        stubble = skin.mean() * 0.35 + hair_col * 0.4
        col = col * (1 - w[:, None]) + stubble * w[:, None]
    if rng.random() < cfg.p_hair:
        line = rng.uniform(30.0, 55.0)  # hair line height above the brows at the front, mm
        recede = rng.uniform(0.0, 15.0) * np.clip((fields.hair_angle - 20.0) / 40.0, 0, 1)
        recede *= np.clip((90.0 - fields.hair_angle) / 30.0, 0, 1)
        jitter = 2.0 * surface_noise(pos, rng, wavelengths=(20.0, 8.0))
        side = np.clip(1.0 - (fields.hair_angle - 40.0) / 60.0, 0.25, 1.0)
        above = fields.hair_height - line * side - recede + jitter
        w = _smoothstep(above / 5.0 + 0.3) * (1.0 - fields.ears)
        strands = np.clip(1.0 + 0.1 * surface_noise(pos, rng, wavelengths=(12.0, 6.0, 3.0)) + 0.06 * fine, 0.6, 1.4)
        col = col * (1 - w[:, None]) + (hair_col * strands[:, None]) * w[:, None]
    if rng.random() < cfg.p_collar:  # clothing hides the cut at the bottom of the neck
        depth = rng.uniform(40.0, 75.0)
        w = _smoothstep((fields.below_chin - depth) / 3.0 + 0.5)[:, None]
        cloth = _cloth_colour(rng) * (1.0 + 0.05 * fine[:, None])
        col = col * (1 - w) + cloth * w

    if rng.random() < cfg.p_freckles:
        spots = _spots(pos, fields.face_front, int(rng.integers(30, 160)), (0.7, 1.2), rng, fields.tree)
        col *= (1.0 - rng.uniform(0.08, 0.2) * spots[:, None] * np.array([0.8, 1.0, 1.15]))
    if rng.random() < cfg.p_moles:
        spots = _spots(pos, fields.face_front + 0.2 * fields.neck, int(rng.integers(1, 4)), (0.9, 1.5), rng, fields.tree)
        col *= (1.0 - rng.uniform(0.25, 0.45) * spots[:, None] * np.array([0.85, 1.0, 1.1]))

    col = _saturate(col, cfg.saturation)
    iris = _pick(rng, IRIS_COLOURS, IRIS_WEIGHTS) * rng.uniform(0.8, 1.2)
    sclera = np.array([0.90, 0.86, 0.82]) * rng.uniform(0.88, 1.0)
    mouth = np.array([0.32, 0.11, 0.10]) * rng.uniform(0.6, 1.1)
    f32 = lambda a: np.clip(np.asarray(a, np.float32), 0.0, 1.0)  # noqa: E731
    return AlbedoSample(colours=f32(col), iris=f32(_saturate(iris, cfg.saturation)),
                        sclera=f32(sclera), mouth=f32(mouth))
