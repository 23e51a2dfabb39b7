"""Settings of the synthetic-face generator (``configs/synth.yaml``), as dataclasses.

Every range is ``[low, high]``; angles in degrees, lengths in mm, colours in [0, 1]. These
settings decide the content of a dataset and are stored in its ``index.json``; how fast it is
made (batch size, threads) is not part of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mvf.errors import MvfError

# Expression groups: blendshapes that move together, by ICT/ARKit name. A sampled face activates
# a few groups; names missing from the model are ignored.
EXPRESSION_GROUPS: dict[str, tuple[str, ...]] = {
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "jaw_open": ("jawOpen",),
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "brows_up": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
    "brows_down": ("browDown_L", "browDown_R"),
    "squint": ("eyeSquint_L", "eyeSquint_R", "cheekSquint_L", "cheekSquint_R"),
    "eyes_wide": ("eyeWide_L", "eyeWide_R"),
    "frown": ("mouthFrown_L", "mouthFrown_R"),
    "pucker": ("mouthPucker",),
    "funnel": ("mouthFunnel",),
    "stretch": ("mouthStretch_L", "mouthStretch_R"),
    "cheek_puff": ("cheekPuff_L", "cheekPuff_R"),
    "mouth_side": ("mouthLeft", "mouthRight"),  # one of the two
    "jaw_side": ("jawLeft", "jawRight"),  # one of the two
    "sneer": ("noseSneer_L", "noseSneer_R"),
    "press": ("mouthPress_L", "mouthPress_R", "mouthRollLower", "mouthRollUpper"),
    "wink": ("eyeBlink_L", "eyeBlink_R"),  # one of the two
    "any": (),  # one blendshape drawn from all of the model's
}
ONE_OF_GROUPS = ("mouth_side", "jaw_side", "wink")


def _check_range(name: str, r: list[float], lo: float | None = None, hi: float | None = None) -> None:
    if len(r) != 2 or not r[0] <= r[1]:
        raise MvfError(f"config key '{name}': expected [low, high] with low <= high, got {r}")
    if lo is not None and r[0] < lo or hi is not None and r[1] > hi:
        raise MvfError(f"config key '{name}': {r} must lie within [{lo}, {hi}]")


@dataclass
class IdentityConfig:
    """Identity coefficients ~ N(0, sigma^2) for the first ``n_modes``, truncated at ``clip`` sigma."""

    n_modes: int = 100
    sigma: float = 1.0
    clip: float = 3.0


@dataclass
class ExpressionConfig:
    """Sparse expressions: neutral with ``p_neutral``, else 1..``max_groups`` active groups."""

    p_neutral: float = 0.3
    max_groups: int = 3
    weight: list[float] = field(default_factory=lambda: [0.2, 1.0])
    asymmetry: float = 0.15  # relative L/R weight jitter within a group
    groups: list[str] = field(default_factory=lambda: [
        "smile", "smile", "jaw_open", "blink", "brows_up", "brows_down", "squint", "eyes_wide",
        "frown", "pucker", "funnel", "stretch", "cheek_puff", "mouth_side", "jaw_side", "sneer",
        "press", "wink", "any"])


@dataclass
class ViewSampling:
    """Per-view head pose and framing. Left views get negative yaw, right views positive."""

    front_yaw: list[float] = field(default_factory=lambda: [-10.0, 10.0])
    side_yaw: list[float] = field(default_factory=lambda: [20.0, 60.0])  # |yaw| of left/right
    pitch: list[float] = field(default_factory=lambda: [-15.0, 15.0])
    roll: list[float] = field(default_factory=lambda: [-10.0, 10.0])
    fill: list[float] = field(default_factory=lambda: [0.45, 0.75])  # landmark box / image side
    shift: float = 0.08  # max offset of the landmark box centre, fraction of the image side
    # [min, max] mm: a pinhole camera this far from the face (drawn per subject, uniform), as in
    # real photos; [] (the default): weak perspective, the model's own camera
    camera_distance_mm: list[float] = field(default_factory=list)


@dataclass
class AlbedoConfig:
    """Procedural per-vertex skin albedo (see `mvf.data.albedo`)."""

    tone: list[float] = field(default_factory=lambda: [0.0, 1.0])  # 0 lightest .. 1 darkest
    noise: float = 1.0  # strength of the multi-scale surface noise
    lips: list[float] = field(default_factory=lambda: [0.3, 0.8])
    brows: list[float] = field(default_factory=lambda: [0.4, 0.85])
    blush: list[float] = field(default_factory=lambda: [0.0, 0.5])
    p_freckles: float = 0.3
    p_moles: float = 0.5
    p_hair: float = 0.75
    p_beard: float = 0.2
    p_collar: float = 0.7
    saturation: float = 1.0  # scales the chroma of every colour


LIGHT_FRAMES = ("model", "camera")


@dataclass
class LightingConfig:
    """Ambient plus ``directional`` lights. ``frame`` "model": fixed to the head, so the three views
    see the same shading (the camera moves around a still head); "camera": fixed to the camera, so
    the shading changes with the view (the head turns under a lamp, or a flash)."""

    ambient: list[float] = field(default_factory=lambda: [0.25, 0.55])
    directional: list[int] = field(default_factory=lambda: [1, 2])
    intensity: list[float] = field(default_factory=lambda: [0.45, 0.9])
    colour_jitter: float = 0.06  # std of each light's warm/cool colour shift
    min_front: float = 0.1  # lights come from directions with z >= this (in front of the face)
    frame: str = "model"  # "model" or "camera": what the light directions are fixed to


@dataclass
class BackgroundConfig:
    """Relative frequencies of the background kinds."""

    solid: float = 0.2
    gradient: float = 0.3
    noise: float = 0.3
    face: float = 0.2  # a cut of another (random) face rendering


@dataclass
class ImageConfig:
    """Camera-like finishing of the composite."""

    blur: list[float] = field(default_factory=lambda: [0.0, 0.6])  # Gaussian sigma, px
    noise: list[float] = field(default_factory=lambda: [0.0, 0.01])  # Gaussian std


@dataclass
class SynthConfig:
    """Everything that decides the content of a synthetic dataset."""

    identity: IdentityConfig = field(default_factory=IdentityConfig)
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)
    views: ViewSampling = field(default_factory=ViewSampling)
    albedo: AlbedoConfig = field(default_factory=AlbedoConfig)
    lighting: LightingConfig = field(default_factory=LightingConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    image: ImageConfig = field(default_factory=ImageConfig)

    def __post_init__(self) -> None:
        v = self.views
        for name, r, lo, hi in (
            ("views.front_yaw", v.front_yaw, -90, 90), ("views.side_yaw", v.side_yaw, 0, 90),
            ("views.pitch", v.pitch, -60, 60), ("views.roll", v.roll, -90, 90),
            ("views.fill", v.fill, 0.05, 1.0), ("albedo.tone", self.albedo.tone, 0, 1),
            ("lighting.ambient", self.lighting.ambient, 0, 2),
            ("lighting.intensity", self.lighting.intensity, 0, 2),
            ("expression.weight", self.expression.weight, 0, 1),
            ("image.blur", self.image.blur, 0, 5), ("image.noise", self.image.noise, 0, 1),
        ):
            _check_range(name, r, lo, hi)
        if v.camera_distance_mm:
            _check_range("views.camera_distance_mm", v.camera_distance_mm, 200, 100000)
        if not 0 <= self.identity.sigma or self.identity.n_modes < 0 or self.identity.clip <= 0:
            raise MvfError("config key 'identity': need n_modes >= 0, sigma >= 0, clip > 0")
        if self.lighting.frame not in LIGHT_FRAMES:
            raise MvfError(f"config key 'lighting.frame': {self.lighting.frame!r} is not one of {list(LIGHT_FRAMES)}")
        if len(self.lighting.directional) != 2 or not 0 <= self.lighting.directional[0] <= self.lighting.directional[1]:
            raise MvfError(f"config key 'lighting.directional': expected [min, max] counts, got {self.lighting.directional}")
        for g in self.expression.groups:
            if g not in EXPRESSION_GROUPS:
                raise MvfError(f"config key 'expression.groups': unknown group '{g}' "
                               f"(known: {', '.join(EXPRESSION_GROUPS)})")
        if self.expression.max_groups < 1:
            raise MvfError("config key 'expression.max_groups': must be >= 1")
        b = self.background
        weights = (b.solid, b.gradient, b.noise, b.face)
        if min(weights) < 0 or sum(weights) <= 0:
            raise MvfError("config key 'background': weights must be >= 0 with a positive sum")
        if not 0 <= v.shift < 0.5:
            raise MvfError(f"config key 'views.shift': must lie in [0, 0.5), got {v.shift}")
