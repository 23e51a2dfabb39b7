"""Random draws for one synthetic subject: face, colours, lights, views, background, finishing.

`sample_subject(seed, index, ...)` derives everything from ``SeedSequence([seed, index])``
(one child stream per aspect), so a subject is the same whichever run, batch or subset makes
it, and changing, say, the background settings leaves the faces alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvf.data.albedo import AlbedoFields, AlbedoSample, sample_albedo
from mvf.data.background import KINDS
from mvf.data.config import EXPRESSION_GROUPS, ONE_OF_GROUPS, ExpressionConfig, IdentityConfig, LightingConfig, SynthConfig

MAX_LIGHTS = 2


@dataclass
class Lighting:
    """Ambient ``(3,)`` and directional lights (model space): directions and colours ``(L, 3)``."""

    ambient: np.ndarray
    directions: np.ndarray
    colours: np.ndarray


@dataclass
class SubjectDraw:
    """Everything sampled for one subject (numpy, float32 unless noted)."""

    index: int
    id: np.ndarray  # (n_id,)
    exp: np.ndarray  # (n_exp,)
    albedo: AlbedoSample
    lighting: Lighting
    angles: np.ndarray  # (V, 3) pitch, yaw, roll in radians
    fill: np.ndarray  # (V,) landmark-box side / image side
    shift: np.ndarray  # (V, 2) landmark-box centre offset / image side
    blur: np.ndarray  # (V,) px at 224
    noise: np.ndarray  # (V,) std
    background: str
    background_seed: np.random.SeedSequence
    seed: int = 0  # the dataset seed
    distractor: int = 0  # which image of the dataset's distractor pool a "face" background cuts
    camera_distance_mm: float = 0.0  # pinhole camera distance; 0: weak perspective


def sample_identity(cfg: IdentityConfig, n_id: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_id,)``: N(0, sigma^2) truncated at ``clip`` sigma for the first ``n_modes``, zeros after."""
    out = np.zeros(n_id, np.float32)
    k = min(cfg.n_modes, n_id)
    z = rng.normal(size=k)
    bad = np.abs(z) > cfg.clip
    while bad.any():  # resample the tails: a truncated normal
        z[bad] = rng.normal(size=int(bad.sum()))
        bad = np.abs(z) > cfg.clip
    out[:k] = z * cfg.sigma
    return out


def sample_expression(cfg: ExpressionConfig, exp_names: list[str], rng: np.random.Generator) -> np.ndarray:
    """Sparse blendshape weights ``(n_exp,)`` in [0, 1]: neutral, or a few active groups."""
    w = np.zeros(len(exp_names), np.float32)
    if rng.random() < cfg.p_neutral or not exp_names or not cfg.groups:
        return w
    index = {n: i for i, n in enumerate(exp_names)}
    k = int(rng.integers(1, cfg.max_groups + 1))
    for g in rng.choice(cfg.groups, size=k):
        weight = rng.uniform(*cfg.weight)
        names = EXPRESSION_GROUPS[str(g)]
        if g == "any":
            names = (exp_names[int(rng.integers(len(exp_names)))],)
        elif g in ONE_OF_GROUPS:
            names = (names[int(rng.integers(len(names)))],)
        for name in names:
            if name in index:
                a = weight * (1.0 + rng.uniform(-cfg.asymmetry, cfg.asymmetry))
                w[index[name]] = max(w[index[name]], float(np.clip(a, 0.0, 1.0)))
    return w


def _light_tint(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A light colour near white: a warm/cool temperature shift and a faint green/magenta tint."""
    warm = rng.normal(jitter / 2, jitter)  # indoor light leans warm
    tint = rng.normal(0.0, jitter / 4)
    return np.array([1.0 + warm, 1.0 + tint, 1.0 - warm])


def sample_lighting(cfg: LightingConfig, rng: np.random.Generator) -> Lighting:
    """Ambient plus 1-2 directional lights from the front hemisphere (zero-coloured if unused)."""
    ambient = rng.uniform(*cfg.ambient) * _light_tint(rng, cfg.colour_jitter)
    n = int(rng.integers(cfg.directional[0], cfg.directional[1] + 1))
    dirs = np.zeros((MAX_LIGHTS, 3))
    dirs[:, 2] = 1.0
    cols = np.zeros((MAX_LIGHTS, 3))
    for i in range(min(n, MAX_LIGHTS)):
        while True:
            az, el = math.radians(rng.uniform(-80, 80)), math.radians(rng.uniform(-20, 65))
            d = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
            if d[2] >= cfg.min_front:
                break
        dirs[i] = d
        strength = rng.uniform(*cfg.intensity) * (1.0 if i == 0 else rng.uniform(0.25, 0.6))
        cols[i] = strength * _light_tint(rng, cfg.colour_jitter)
    total = ambient.mean() + cols.mean(1).sum()
    if total > 1.35:  # keep the brightest surfaces from clipping
        ambient, cols = ambient * 1.35 / total, cols * 1.35 / total
    f32 = lambda a: np.clip(np.asarray(a, np.float32), 0.0, None)  # noqa: E731
    return Lighting(f32(ambient), np.asarray(dirs, np.float32), f32(cols))


def sample_views(cfg: SynthConfig, rng: np.random.Generator, n_views: int = 3
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Angles ``(V, 3)`` rad (front, left = negative yaw, right = positive), fill ``(V,)``, shift ``(V, 2)``."""
    v = cfg.views
    yaw = [rng.uniform(*v.front_yaw), -rng.uniform(*v.side_yaw), rng.uniform(*v.side_yaw)][:n_views]
    angles = np.array([[rng.uniform(*v.pitch), y, rng.uniform(*v.roll)] for y in yaw])
    fill = rng.uniform(*v.fill, size=n_views)
    room = np.minimum(v.shift, (1.0 - fill) / 2.0)
    shift = rng.uniform(-1.0, 1.0, size=(n_views, 2)) * room[:, None]
    return np.radians(angles).astype(np.float32), fill.astype(np.float32), shift.astype(np.float32)


def sample_subject(seed: int, index: int, cfg: SynthConfig, n_id: int, exp_names: list[str],
                   fields: AlbedoFields, pool_size: int = 8) -> SubjectDraw:
    """All random choices for subject ``index`` of a dataset with ``seed``."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    face, alb, light, view, bg, image = (np.random.default_rng(s) for s in ss.spawn(6))
    kinds = np.array([cfg.background.solid, cfg.background.gradient, cfg.background.noise,
                      cfg.background.face], np.float64)
    kind = KINDS[int(bg.choice(len(KINDS), p=kinds / kinds.sum()))]
    angles, fill, shift = sample_views(cfg, view)
    return SubjectDraw(
        index=index,
        id=sample_identity(cfg.identity, n_id, face),
        exp=sample_expression(cfg.expression, exp_names, face),
        albedo=sample_albedo(fields, cfg.albedo, alb),
        lighting=sample_lighting(cfg.lighting, light),
        angles=angles, fill=fill, shift=shift,
        blur=image.uniform(*cfg.image.blur, size=3).astype(np.float32),
        noise=image.uniform(*cfg.image.noise, size=3).astype(np.float32),
        background=kind,
        background_seed=np.random.SeedSequence(list(bg.integers(0, 2**31, size=4))),
        seed=int(seed),
        distractor=int(bg.integers(pool_size)),
        # drawn last from the view stream, so datasets without it are unchanged
        camera_distance_mm=float(view.uniform(*cfg.views.camera_distance_mm)) if cfg.views.camera_distance_mm else 0.0,
    )


def sample_distractor(seed: int, k: int, cfg: SynthConfig, n_id: int, exp_names: list[str],
                      fields: AlbedoFields) -> SubjectDraw:
    """Image ``k`` of a dataset's distractor pool: another random person, seen from any side,
    filling the frame, on a gradient (the source that "face" backgrounds cut from)."""
    ss = np.random.SeedSequence([int(seed), 2**32 - 1, int(k)])
    face, alb, light, other = (np.random.default_rng(s) for s in ss.spawn(4))
    angles = np.radians(np.array([[other.uniform(-20, 20), other.uniform(-90, 90), other.uniform(-20, 20)]]))
    return SubjectDraw(
        index=-1 - int(k),
        id=sample_identity(cfg.identity, n_id, face),
        exp=sample_expression(cfg.expression, exp_names, face),
        albedo=sample_albedo(fields, cfg.albedo, alb),
        lighting=sample_lighting(cfg.lighting, light),
        angles=angles.astype(np.float32),
        fill=np.array([other.uniform(0.6, 1.2)], np.float32),
        shift=other.uniform(-0.25, 0.25, size=(1, 2)).astype(np.float32),
        blur=np.zeros(1, np.float32), noise=np.zeros(1, np.float32),
        background="gradient",
        background_seed=np.random.SeedSequence(list(other.integers(0, 2**31, size=4))),
        seed=int(seed),
    )
