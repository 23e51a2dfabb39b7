"""MVF-Net: a shared backbone per view, a 3DMM head on fused features, a shared pose head.

``images (B, V, 3, H, W)`` in [0, 1] -> ``{"id": (B, n_id), "exp": (B, n_exp), "pose": (B, V, 6)}``.

* Every view goes through the same backbone (shared weights). Its feature map becomes a view
  feature: global average pooling plus a small flattened spatial branch (1x1 conv, so the
  feature still knows *where* the face is, which tx, ty and f need) and a linear layer + ReLU.
* Optional landmark branch (``model.landmark_head``): 68 heat maps at stride 4 from a light
  feature pyramid over the backbone (`LandmarkHead`), soft-argmax -> 2D landmarks (px),
  trained by the ``landmark2d`` loss. A geometry MLP turns each view's landmarks into a
  geometry feature; its own fusion and heads (same kinds) add their outputs to the image
  branch's. The ``geometry`` stage trains that branch alone
  on landmarks of faces sampled from the 3DMM (cheap: no images), so the image stages start
  from a network that already maps 2D landmarks to shape and pose.
* Fusion of the view features for the 3DMM head: ``concat`` (the paper's; exactly the views
  front, left, right in that order), ``mean`` or ``attention`` (softmax-weighted sum, any
  number of views including one).
* 3DMM head: MLP -> ``id`` (unit N(0, 1) prior per mode) and ``exp``. ``exp`` is linear, not
  squashed: a zero output is the neutral face, and the coefficient prior keeps it near [0, 1].
* Pose head (shared across views, on each view's own feature): ``pose = mean + scale * raw``
  with the constants of `PoseNorm`, so a zero raw output is the frontal mean face, its
  landmark box centred in the image and filling `FACE_FILL` of it (as the synthetic framing).

The last layer of both heads starts at zero, so an untrained network predicts exactly that
mean face, frontal and centred.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from mvf.net.backbones import build_backbone
from mvf.errors import MvfError
from mvf.face.model import FaceModel
from mvf.net.config import ModelConfig
from renderer.views import VIEWS

FACE_FILL = 0.6  # zero pose output: the mean face's 68-landmark box side is 60% of the image
VIEW_FEATURES = 512  # width of a view's image feature
GEO_FEATURES = 256  # width of a view's landmark-geometry feature
N_LANDMARKS = 68


@dataclass(frozen=True)
class PoseNorm:
    """``pose = mean + scale * raw`` per entry (f px/mm, alpha, beta, gamma rad, tx, ty px).

    The framing matches the synthetic data (`mvf.data.synth`): a view is framed by the square
    box around its 68 projected landmarks. For an ``S`` px image and the mean face's frontal
    landmark box of side ``L`` mm (its larger extent) centred on ``(c_x, c_y)`` mm:

    ======  =======================  =======================================================
    entry   mean                     scale
    ======  =======================  =======================================================
    f       f0 = FACE_FILL * S / L   0.25 f0 (box fills 45-75% of the image: raw -1..1)
    alpha   0                        0.25 rad (~14 deg)
    beta    0                        0.6 rad (~34 deg; side views sit near raw +-1)
    gamma   0                        0.2 rad (~11 deg)
    tx      S / 2 - f0 * c_x         0.1 S
    ty      S / 2 + f0 * c_y         0.1 S
    ======  =======================  =======================================================

    So a zero raw output is the frontal mean face with its landmark box centred in the image,
    filling `FACE_FILL` of it.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def for_box(cls, image_size: int, side_mm: float, centre_mm: tuple[float, float]) -> "PoseNorm":
        s = float(image_size)
        f0 = FACE_FILL * s / side_mm
        return cls(mean=(f0, 0.0, 0.0, 0.0, s / 2.0 - f0 * centre_mm[0], s / 2.0 + f0 * centre_mm[1]),
                   scale=(0.25 * f0, 0.25, 0.6, 0.2, 0.1 * s, 0.1 * s))

    @classmethod
    def for_landmarks(cls, image_size: int, landmarks_mm: torch.Tensor) -> "PoseNorm":
        """From the mean face's 68 landmarks ``(68, 3)`` mm (frontal view: x, y extents)."""
        lo, hi = landmarks_mm[:, :2].min(0).values, landmarks_mm[:, :2].max(0).values
        centre = 0.5 * (lo + hi)
        return cls.for_box(image_size, float((hi - lo).max()), (float(centre[0]), float(centre[1])))

    def tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        scale = torch.tensor(self.scale, dtype=like.dtype, device=like.device)
        return mean, scale

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """``(..., 6)`` raw -> pose."""
        mean, scale = self.tensors(raw)
        return mean + scale * raw

    def encode(self, pose: torch.Tensor) -> torch.Tensor:
        """``(..., 6)`` pose -> raw (the inverse of `decode`)."""
        mean, scale = self.tensors(pose)
        return (pose - mean) / scale


@functools.lru_cache(maxsize=None)
def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 / AMX through oneDNN); elsewhere bf16 autocast falls back to slow reference code."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    """``model.precision`` resolved on ``device``: bf16 always, fp32 never, auto where it's fast."""
    return precision == "bf16" or (precision == "auto" and fast_bf16(device))


class ViewEncoder(nn.Module):
    """Backbone + pooling: ``(N, 3, S, S)`` -> ``(N, VIEW_FEATURES)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained)
        c = self.backbone.out_channels
        side = _map_side(cfg.backbone, cfg.image_size)
        self.spatial = nn.Sequential(nn.Conv2d(c, cfg.spatial, 1), nn.ReLU(inplace=True)) if cfg.spatial else None
        n_in = c + (cfg.spatial * side * side if cfg.spatial else 0)
        self.landmark_head = LandmarkHead(self.backbone.pyramid_channels) if cfg.landmark_head else None
        self.precision = cfg.precision  # backbone and landmark head under bfloat16 autocast
        self.proj = nn.Sequential(nn.Linear(n_in, VIEW_FEATURES), nn.ReLU(inplace=True))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(N, 3, S, S)`` -> view features ``(N, VIEW_FEATURES)`` and, with the landmark head,
        landmarks ``(N, 68, 2)`` px (else None)."""
        landmarks = None
        bf16 = uses_bf16(self.precision, images.device)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            if self.landmark_head is None:
                fmap = self.backbone(images)
            else:
                maps = self.backbone.pyramid(images)
                fmap = maps[-1]
                logits = self.landmark_head(maps)
        if self.landmark_head is not None:
            landmarks = soft_argmax(logits.float(), images.shape[-1])
        fmap = fmap.float()
        parts = [fmap.mean((2, 3))]
        if self.spatial is not None:
            parts.append(self.spatial(fmap).flatten(1))
        return self.proj(torch.cat(parts, 1)), landmarks


class LandmarkHead(nn.Module):
    """68 landmark heat maps at stride 4 from the backbone's pyramid (a light feature pyramid).

    Top-down: each map (strides 32, 16, 8, 4) goes through a 1x1 conv to ``width`` channels and
    is added to the upsampled coarser sum, so the stride-4 heat maps see the whole face (stride
    32 context) with stride-4 detail; then a 3x3 conv + BN + ReLU and a 1x1 conv to the 68
    logit maps. ``[(N, C_k, H/s_k, W/s_k)]`` -> ``(N, 68, H/4, W/4)``.
    """

    def __init__(self, channels: tuple[int, ...], width: int = 96):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.out = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, N_LANDMARKS, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](maps[-1])
        for lateral, fmap in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            x = lateral(fmap) + nn.functional.interpolate(x, size=fmap.shape[-2:], mode="bilinear",
                                                          align_corners=False)
        return self.out(x)


class GeometryEncoder(nn.Module):
    """2D points -> a view's geometry feature: ``(N, K, 2)`` px -> ``(N, GEO_FEATURES)``.

    ``K`` is 68 (the landmark head's) or the detector's calibrated points. Coordinates are
    normalised to [-1, 1] over the ``image_size`` px image first.
    """

    def __init__(self, image_size: int, n_points: int = N_LANDMARKS):
        super().__init__()
        self.image_size = image_size
        self.n_points = n_points
        self.mlp = nn.Sequential(nn.Linear(2 * n_points, GEO_FEATURES), nn.ReLU(inplace=True),
                                 nn.Linear(GEO_FEATURES, GEO_FEATURES), nn.ReLU(inplace=True))

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        return self.mlp((2.0 * landmarks / self.image_size - 1.0).flatten(1))


def normalized_points(points: torch.Tensor, image_size: int) -> torch.Tensor:
    """Per-view shape features of 2D points ``(B, V, K, 2)`` px -> ``(B, V, 2K + 3)``: the points
    centred on their centroid and divided by their RMS radius, then the centroid (in image sizes)
    and the log of the radius (in image sizes): position and scale apart from shape."""
    centre = points.mean(2, keepdim=True)
    rel = points - centre
    radius = rel.square().sum(-1).mean(2, keepdim=True).sqrt().clamp_min(1e-6)  # (B, V, 1)
    shape = (rel / radius[..., None]).flatten(2)
    return torch.cat([shape, centre[:, :, 0] / image_size, torch.log(radius / image_size)], -1)


class LinearGeometry(nn.Module):
    """id and exp ``(B, P)`` as a linear function of the views' `normalized_points`: concatenated
    for ``concat`` fusion, else averaged over the views. Zero until fitted: a geometry stage with
    ``linear_fit_samples`` solves it in closed form (`mvf.train.geometry_stage.fit_linear_geometry`)."""

    def __init__(self, fusion: str, image_size: int, n_points: int, n_out: int):
        super().__init__()
        self.concat = fusion == "concat"
        self.image_size = image_size
        self.n_features = (2 * n_points + 3) * (len(VIEWS) if self.concat else 1)
        self.linear = nn.Linear(self.n_features, n_out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, V, K, 2)`` px -> ``(B, n_features)``."""
        f = normalized_points(points, self.image_size)
        return f.flatten(1) if self.concat else f.mean(1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(points))


def soft_argmax(logits: torch.Tensor, image_size: int) -> torch.Tensor:
    """Expected pixel position of each heat map: ``(N, K, h, w)`` logits -> ``(N, K, 2)`` px.

    Cell ``(i, j)`` of an ``h x w`` map over an ``S x S`` image is centred at
    ``((j + 0.5) S / w, (i + 0.5) S / h)`` (the image frame of `renderer.camera`).
    """
    n, k, h, w = logits.shape
    prob = torch.softmax(logits.flatten(2), -1).reshape(n, k, h, w)
    xs = (torch.arange(w, dtype=logits.dtype, device=logits.device) + 0.5) * (image_size / w)
    ys = (torch.arange(h, dtype=logits.dtype, device=logits.device) + 0.5) * (image_size / h)
    u = (prob.sum(2) * xs).sum(-1)
    v = (prob.sum(3) * ys).sum(-1)
    return torch.stack([u, v], -1)


def _map_side(backbone: str, image_size: int) -> int:
    """Side of the backbone's output map for an ``image_size`` input (all trunks are stride 32)."""
    if backbone == "vgg":  # five 2x2 max-pools, floor each time
        side = image_size
        for _ in range(5):
            side //= 2
        return side
    side = image_size  # stride-2 convs/pools with padding: ceil at each of the five halvings
    for _ in range(5):
        side = (side + 1) // 2
    return side


class Fusion(nn.Module):
    """``(B, V, F)`` view features -> ``(B, F_out)``."""

    def __init__(self, kind: str, n_features: int):
        super().__init__()
        self.kind = kind
        if kind == "concat":
            self.out_features = n_features * len(VIEWS)
        elif kind in ("mean", "attention"):
            self.out_features = n_features
        else:
            raise MvfError(f"fusion '{kind}': unknown (choose from concat, mean, attention)")
        if kind == "attention":
            self.score = nn.Sequential(nn.Linear(n_features, 128), nn.Tanh(), nn.Linear(128, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            return feats.flatten(1)
        if self.kind == "mean":
            return feats.mean(1)
        weights = torch.softmax(self.score(feats).squeeze(-1), dim=1)  # (B, V)
        return (weights.unsqueeze(-1) * feats).sum(1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    last = nn.Linear(hidden, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), last)


class MVFNet(nn.Module):
    """The multi-view regressor. ``pose_norm`` fixes the pose output normalisation."""

    def __init__(self, cfg: ModelConfig, pose_norm: PoseNorm):
        super().__init__()
        self.cfg = cfg
        self.pose_norm = pose_norm
        self.encoder = ViewEncoder(cfg)
        self.fusion = Fusion(cfg.fusion, VIEW_FEATURES)
        self.head_3dmm = _mlp(self.fusion.out_features, cfg.hidden, cfg.n_id + cfg.n_exp)
        self.head_pose = _mlp(VIEW_FEATURES, 256, 6)
        self.geometry = None
        if self.geometry_points:  # the landmark-geometry branch: its outputs add to the image branch's
            self.geometry = GeometryEncoder(cfg.image_size, self.geometry_points)
            self.geo_fusion = Fusion(cfg.fusion, GEO_FEATURES)
            self.geo_head_3dmm = _mlp(self.geo_fusion.out_features, cfg.hidden, cfg.n_id + cfg.n_exp)
            self.geo_head_pose = _mlp(GEO_FEATURES, 256, 6)
        self.geo_linear = None
        if self.geometry_points and cfg.geometry_linear:
            self.geo_linear = LinearGeometry(cfg.fusion, cfg.image_size, self.geometry_points,
                                             cfg.n_id + cfg.n_exp)

    @property
    def detector_input(self) -> bool:
        """Whether the geometry branch reads given detector points (else the landmark head's)."""
        return self.cfg.geometry_input == "detector"

    @property
    def geometry_points(self) -> int:
        """K points of the geometry branch's input (0: no geometry branch)."""
        if self.detector_input:
            return self.cfg.geometry_points
        return N_LANDMARKS if self.cfg.landmark_head else 0

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.cfg.views)

    def check_views(self, views: tuple[str, ...] | list[str] | None, n_views: int) -> None:
        """`MvfError` unless ``n_views`` images (named ``views``) suit this network's fusion."""
        if views is not None and len(views) != n_views:
            raise MvfError(f"{n_views} images for {len(views)} view names")
        if self.cfg.fusion == "concat":
            if n_views != len(VIEWS) or (views is not None and tuple(views) != VIEWS):
                got = ", ".join(views) if views is not None else f"{n_views} views"
                raise MvfError(f"concat fusion needs exactly the views {', '.join(VIEWS)} in that "
                               f"order (got {got})")
        elif n_views < 1:
            raise MvfError("need at least one view")

    def forward(self, images: torch.Tensor | None, views: tuple[str, ...] | None = None,
                landmarks: torch.Tensor | None = None, detector_points: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``images (B, V, 3, S, S)`` in [0, 1] -> id ``(B, n_id)``, exp ``(B, n_exp)``, pose ``(B, V, 6)``
        and, with ``model.landmark_head``, ``landmarks (B, V, 68, 2)`` px (the head's).

        ``detector_points (B, V, K, 2)`` px in the network's input frame: the geometry branch's
        input with ``model.geometry_input: detector`` (required then).
        ``images=None`` runs the geometry branch alone on given 2D points, ``landmarks`` or
        ``detector_points`` ``(B, V, K, 2)`` px (K = 68 for the head's input): the image branch
        then contributes nothing (the ``geometry`` stage trains it so, from sampled faces).
        """
        if images is None:
            return self._from_points(detector_points if detector_points is not None else landmarks, views)
        if images.dim() != 5 or images.shape[2] != 3:
            raise MvfError(f"images must be (B, V, 3, H, W), got {tuple(images.shape)}")
        b, v, _, h, w = images.shape
        s = self.cfg.image_size
        if (h, w) != (s, s):
            raise MvfError(f"images are {w}x{h} px but this network takes {s}x{s}")
        self.check_views(views, v)
        if self.detector_input:
            self._check_points(detector_points, (b, v))
        feats, lm = self.encoder(images.reshape(b * v, 3, h, w))
        feats = feats.reshape(b, v, -1)
        coeffs = self.head_3dmm(self.fusion(feats))
        raw_pose = self.head_pose(feats)
        if lm is not None:
            lm = lm.reshape(b, v, N_LANDMARKS, 2)
        if self.geometry is not None:
            geo_coeffs, geo_pose = self._geometry_heads(detector_points if self.detector_input else lm)
            coeffs, raw_pose = coeffs + geo_coeffs, raw_pose + geo_pose
        out = self.decode(coeffs, raw_pose)
        if lm is not None:
            out["landmarks"] = lm
        return out

    def _check_points(self, points: torch.Tensor | None, bv: tuple[int, int] | None = None) -> None:
        k = self.geometry_points
        if points is None or points.dim() != 4 or points.shape[2:] != (k, 2) or (
                bv is not None and tuple(points.shape[:2]) != bv):
            what = "detector_points" if self.detector_input else "landmarks"
            shape = f"({bv[0]}, {bv[1]}, {k}, 2)" if bv is not None else f"(B, V, {k}, 2)"
            raise MvfError(f"{what} must be {shape}, got {None if points is None else tuple(points.shape)}")

    def _geometry_heads(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, v = points.shape[:2]
        geo = self.geometry(points.reshape(b * v, -1, 2)).reshape(b, v, -1)
        coeffs = self.geo_head_3dmm(self.geo_fusion(geo))
        if self.geo_linear is not None:
            coeffs = coeffs + self.geo_linear(points)
        return coeffs, self.geo_head_pose(geo)

    def _from_points(self, points: torch.Tensor | None, views) -> dict[str, torch.Tensor]:
        if self.geometry is None:
            raise MvfError("this network has no landmark head (model.landmark_head: false) and no "
                           "detector input (model.geometry_input: head)")
        self._check_points(points)
        self.check_views(views, points.shape[1])
        coeffs, raw_pose = self._geometry_heads(points)
        return self.decode(coeffs, raw_pose)

    def decode(self, coeffs: torch.Tensor, raw_pose: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs ``(B, n_id + n_exp)``, ``(B, V, 6)`` -> the output dict."""
        n_id = self.cfg.n_id
        return {"id": coeffs[:, :n_id], "exp": coeffs[:, n_id:], "pose": self.pose_norm.decode(raw_pose)}


def build_network(cfg: ModelConfig, face: FaceModel) -> MVFNet:
    """The network for ``cfg``, with the pose normalisation of the face model's mean face."""
    landmarks = face.landmarks_3d(face.mean[None])[0].cpu()
    return MVFNet(cfg, PoseNorm.for_landmarks(cfg.image_size, landmarks))
