"""MVF-Net's self-supervised view-consistency losses over rasterized visibility.

For every ordered view pair (A, B) the predicted mesh is rasterized in B; each covered pixel's
surface point is projected into A and A's image is sampled there, giving I_A→B
(`renderer.cross_view_warp`). The pixels that both z-buffers see, inside both images, form the
co-visibility mask, which is then eroded (`erode_covisible`). On it:

* photometric loss: robust distance between I_B and I_A→B, averaged over the co-visible
  pixels of each pair (so shrinking the overlap cannot lower it by itself);
* alignment loss: ``|F(I_B, I_A→B)| + |F(I_A→B, I_B)|`` with a differentiable flow estimator F;
* landmark loss on given 2D landmarks (`mvf.losses.supervised.landmark_loss`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as tnf
from torch import Tensor

from mvf.errors import MvfError
from mvf.face.mesh import face_normals, vertex_normals
from renderer import sample_pairs, warp_geometry


@dataclass
class CrossViewConfig:
    """Cross-view loss settings.

    erode_px: the co-visibility erosion rule. A pixel of view B stays co-visible only if every
        pixel within a (2·erode_px+1)² square around it is co-visible too (a min-pool). This
        drops silhouette and occlusion-boundary pixels, where hard rasterization edges and the
        background leaking into bilinear samples make the colours unreliable. 0 keeps the raw mask.
    photometric: "charbonnier" (sqrt(d² + eps²)), "l1" (mean |d| over the channels) or "log_l1"
        (``c log(1 + l1 / c)``: ≈ l1 below ``c``, growing only logarithmically beyond, so
        pixels that cannot match, such as specularities, shadows or hair, weigh less).
    charbonnier_eps: eps of the Charbonnier distance, in image units ([0, 1] intensities).
    log_scale: ``c`` of "log_l1", in image units.
    min_covisible_px: pairs with fewer co-visible pixels are ignored (weight 0).
    normalise: colour matching of I_A→B to I_B before the photometric distance, per pair and
        channel over the co-visible pixels: "none"; "gain" (scale so the means agree: exposure
        and white balance differ between real cameras); "affine" (means and standard
        deviations agree: also absorbs contrast); "shading" (the affine match, with the gain a
        linear function of the surface normal seen at each pixel of B: ``c + I_A→B · (g0 + g · n)``
        fitted by least squares, so shading that differs between the views because the lights
        stay with the camera while the head turns, or a flash, is matched too).
    highpass_px: when > 0, both images lose their local mean (a mask-normalised Gaussian blur of
        this sigma, pixels) before they are compared, so slowly varying shading differences
        between the views (a head turning under fixed lights) do not count. 0 compares colours.
    """

    erode_px: int = 2
    photometric: str = "charbonnier"
    charbonnier_eps: float = 0.01
    log_scale: float = 0.05
    min_covisible_px: int = 16
    normalise: str = "none"
    highpass_px: float = 0.0

    def __post_init__(self) -> None:
        if self.photometric not in PHOTOMETRIC:
            raise MvfError(f"config key 'photometric': {self.photometric!r} is not one of {list(PHOTOMETRIC)}")
        if self.normalise not in NORMALISE:
            raise MvfError(f"config key 'normalise': {self.normalise!r} is not one of {list(NORMALISE)}")
        if self.erode_px < 0:
            raise MvfError(f"config key 'erode_px': must be >= 0, got {self.erode_px}")
        if self.log_scale <= 0:
            raise MvfError(f"config key 'log_scale': must be > 0, got {self.log_scale}")


PHOTOMETRIC = ("charbonnier", "l1", "log_l1")
NORMALISE = ("none", "gain", "affine", "shading")
SHADING_RIDGE = 1e-5  # of the shading match's normal equations, relative to their mean diagonal
_BASIS_PAIRS = torch.triu_indices(4, 4)  # (2, 10): the products b_i b_j (i <= j) of the basis (1, n)


def match_shading(source: Tensor, target: Tensor, mask: Tensor, normals: Tensor) -> Tensor:
    """``c + source · (g0 + g · n)``, per image and channel, closest to ``target`` over ``mask`` (least
    squares, ridge `SHADING_RIDGE`): the affine colour match with a gain that varies linearly with
    the unit surface normal ``n``.

    source, target: ``(..., C, H, W)``; mask: ``(..., 1, H, W)``; normals: ``(..., 3, H, W)``.
    Differentiable in ``source`` (the fitted coefficients included). The 5 x 5 normal equations
    are sums of products of the basis ``(1, n)`` (`_BASIS_PAIRS`), never a per-channel feature stack.
    """
    basis = torch.cat([torch.ones_like(mask), normals], -3).flatten(-2)  # (..., 4, HW)
    i, j = _BASIS_PAIRS.to(basis.device)
    products = basis[..., i, :] * basis[..., j, :]  # (..., 10, HW): b_i b_j, i <= j
    m, s = mask.flatten(-2), source.flatten(-2)  # (..., 1, HW), (..., C, HW)
    sm, tm = s * m, target.flatten(-2) * m
    sb = sm @ basis.transpose(-1, -2)  # (..., C, 4): sum m s b_i
    upper = (sm * s) @ products.transpose(-1, -2)  # (..., C, 10): sum m s^2 b_i b_j
    sbb = torch.zeros(*upper.shape[:-1], 16, dtype=s.dtype, device=s.device)
    sbb = sbb.index_copy(-1, i * 4 + j, upper).index_copy(-1, j * 4 + i, upper).unflatten(-1, (4, 4))
    area = m.sum(-1, keepdim=True).expand(*sb.shape[:-1], 1)  # (..., C, 1)
    gram = torch.cat([torch.cat([area, sb], -1)[..., None, :], torch.cat([sb[..., :, None], sbb], -1)], -2)
    rhs = torch.cat([tm.sum(-1, keepdim=True), (tm * s) @ basis.transpose(-1, -2)], -1)[..., None]  # (..., C, 5, 1)
    ridge = SHADING_RIDGE * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-6)
    eye = torch.eye(5, dtype=gram.dtype, device=gram.device)
    coef = torch.linalg.solve(gram + ridge[..., None, None] * eye, rhs)[..., 0]  # (..., C, 5): c, g0, g
    return (coef[..., :1] + s * (coef[..., 1:] @ basis)).reshape(source.shape)


def match_colours(source: Tensor, target: Tensor, mask: Tensor, kind: str = "gain",
                  normals: Tensor | None = None) -> Tensor:
    """Map ``source`` colours so their statistics over ``mask`` match ``target``'s, per image and channel.

    source, target: ``(..., C, H, W)``; mask: ``(..., 1, H, W)``. ``kind``: "none", "gain"
    (``source · mean_t / mean_s``), "affine" (``(source - mean_s) · std_t / std_s + mean_t``) or
    "shading" (`match_shading`, with ``normals`` ``(..., 3, H, W)``).
    Differentiable in ``source`` (the statistics included).
    """
    if kind == "none":
        return source
    if kind == "shading":
        if normals is None:
            raise ValueError("colour matching 'shading' needs the surface normals")
        return match_shading(source, target, mask, normals)
    area = mask.sum((-2, -1), keepdim=True).clamp_min(1.0)
    mean_s = (source * mask).sum((-2, -1), keepdim=True) / area
    mean_t = (target * mask).sum((-2, -1), keepdim=True) / area
    if kind == "gain":
        return source * (mean_t / mean_s.clamp_min(1e-3))
    if kind == "affine":
        std_s = torch.sqrt(((source - mean_s).square() * mask).sum((-2, -1), keepdim=True) / area + 1e-6)
        std_t = torch.sqrt(((target - mean_t).square() * mask).sum((-2, -1), keepdim=True) / area + 1e-6)
        return (source - mean_s) * (std_t / std_s) + mean_t
    raise ValueError(f"unknown colour matching {kind!r} (use one of {NORMALISE})")


def erode_covisible(valid: Tensor, erode_px: int) -> Tensor:
    """Erode a co-visibility mask ``(..., 1, H, W)`` by ``erode_px`` pixels (square min-pool)."""
    if erode_px <= 0:
        return valid.float()
    shape = valid.shape
    v = valid.float().reshape(-1, 1, *shape[-2:])
    k = 2 * erode_px + 1
    eroded = -tnf.max_pool2d(-v, k, stride=1, padding=erode_px)
    return eroded.reshape(shape)


def robust_distance(diff: Tensor, kind: str = "charbonnier", eps: float = 0.01, scale: float = 0.05) -> Tensor:
    """Per-pixel robust distance of a colour difference ``(..., 3, H, W) -> (..., 1, H, W)``
    (`CrossViewConfig.photometric`; ``eps`` Charbonnier's, ``scale`` log_l1's ``c``)."""
    if kind == "l1":
        return diff.abs().mean(-3, keepdim=True)
    if kind == "log_l1":
        return scale * torch.log1p(diff.abs().mean(-3, keepdim=True) / scale)
    if kind == "charbonnier":
        return torch.sqrt(diff.square().sum(-3, keepdim=True) / diff.shape[-3] + eps * eps) - eps
    raise ValueError(f"unknown photometric distance {kind!r} (use one of {PHOTOMETRIC})")


def masked_pair_mean(per_pixel: Tensor, mask: Tensor, min_px: int = 1) -> tuple[Tensor, Tensor]:
    """Mean of ``(B, P, 1, H, W)`` values over each pair's mask, then over pairs with enough pixels.

    Returns (scalar loss, per-pair means ``(B, P)``). Pairs with fewer than ``min_px`` mask
    pixels get weight 0; if none qualifies the loss is 0 (still attached to the graph).
    """
    area = mask.sum(dim=(-3, -2, -1))
    per_pair = (per_pixel * mask).sum(dim=(-3, -2, -1)) / area.clamp_min(1.0)
    use = (area >= min_px).float()
    loss = (per_pair * use).sum() / use.sum().clamp_min(1.0)
    return loss, per_pair


def gaussian_band(n: int, sigma: float, dtype: torch.dtype, device) -> Tensor:
    """``(n, n)`` matrix of a 1D Gaussian blur (sigma px, truncated at ``ceil(3 sigma)``, zero padding):
    row i holds the normalised kernel centred on i."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    i = torch.arange(n, dtype=dtype, device=device)
    d = i[:, None] - i[None, :]
    taps = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    norm = torch.exp(-0.5 * (taps / sigma) ** 2).sum()
    return torch.exp(-0.5 * (d / sigma) ** 2) * (d.abs() <= radius) / norm


def masked_blur(images: Tensor, mask: Tensor, sigma: float) -> Tensor:
    """Gaussian blur (sigma px) of ``(..., C, H, W)`` images using only pixels where ``mask``
    ``(..., 1, H, W)`` is set (normalised convolution); separable, differentiable. The two passes
    are products with banded ``(H, H)`` and ``(W, W)`` matrices (`gaussian_band`): on the CPU 2.5x
    faster than grouped convolutions at the fit's 160 px, with the same result."""
    c = images.shape[-3]
    rows = gaussian_band(images.shape[-2], sigma, images.dtype, images.device)
    cols = gaussian_band(images.shape[-1], sigma, images.dtype, images.device)
    out = rows @ torch.cat([images * mask, mask], -3) @ cols.T
    return out[..., :c, :, :] / out[..., c:, :, :].clamp_min(1e-4)


def photometric_loss(target: Tensor, warped: Tensor, mask: Tensor, cfg: CrossViewConfig,
                     normals: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Robust photometric error between I_B ``target`` and I_A→B ``warped``, both ``(B, P, 3, H, W)``.

    ``mask`` ``(B, P, 1, H, W)``: the (eroded) co-visibility. ``warped`` is first colour-matched
    to ``target`` over the mask when ``cfg.normalise`` says so (`match_colours`; "shading" needs
    ``normals`` ``(B, P, 3, H, W)``, the unit surface normal at each pixel of B).
    Returns (loss, error map ``(B, P, 1, H, W)``).
    """
    warped = match_colours(warped, target, mask, cfg.normalise, normals)
    if cfg.highpass_px > 0:
        target = target - masked_blur(target, mask, cfg.highpass_px)
        warped = warped - masked_blur(warped, mask, cfg.highpass_px)
    err = robust_distance(target - warped, cfg.photometric, cfg.charbonnier_eps, cfg.log_scale)
    loss, _ = masked_pair_mean(err, mask, cfg.min_covisible_px)
    return loss, err * mask


def flow_alignment_loss(flow_net, target: Tensor, warped: Tensor, mask: Tensor,
                        cfg: CrossViewConfig) -> tuple[Tensor, Tensor]:
    """``|F(I_B, I_A→B)| + |F(I_A→B, I_B)|`` averaged over co-visible pixels, per pair.

    Images outside the mask are replaced by the target so the estimator only sees the overlap.
    Returns (loss, forward flow ``(B, P, 2, H, W)`` for pictures). Gradients flow through F.
    """
    b, p, c, h, w = target.shape
    m = mask.reshape(b * p, 1, h, w)
    tgt = target.reshape(b * p, c, h, w)
    wrp = warped.reshape(b * p, c, h, w) * m + tgt * (1 - m)
    fwd = flow_net(tgt, wrp, m)
    bwd = flow_net(wrp, tgt, m)
    mag = torch.sqrt(fwd.square().sum(1, keepdim=True) + 1e-6) + torch.sqrt(bwd.square().sum(1, keepdim=True) + 1e-6)
    loss, _ = masked_pair_mean(mag.reshape(b, p, 1, h, w), mask, cfg.min_covisible_px)
    return loss, fwd.reshape(b, p, 2, h, w)


@dataclass
class CrossViewResult:
    """Losses and the intermediate images of one cross-view evaluation (for pictures)."""

    photometric: Tensor
    flow: Tensor
    pairs: list[tuple[int, int]]
    warped: Tensor          # (B, P, 3, H, W)  I_A→B
    covisible: Tensor       # (B, P, 1, H, W)  eroded co-visibility in B
    error: Tensor           # (B, P, 1, H, W)  photometric error map (0 outside the mask)
    flow_field: Tensor | None = None   # (B, P, 2, H, W) F(I_B, I_A→B)
    extras: dict = field(default_factory=dict)


@torch.no_grad()
def pixel_normals(verts: Tensor, faces: Tensor, pix_to_face: Tensor, n_views: int) -> Tensor:
    """``(B, V, 3, H, W)`` unit normal of the triangle seen at each pixel (0 where empty), from
    ``verts`` ``(B, N, 3)`` or ``(B, V, N, 3)`` and the views' packed ``pix_to_face``
    ``(B * V, H, W, 1)``. Not differentiated: it only shapes the shading match."""
    per_view = verts if verts.dim() == 4 else verts[:, None].expand(-1, n_views, -1, -1)
    fn = tnf.normalize(face_normals(per_view, faces), dim=-1, eps=1e-12).reshape(-1, 3)  # (B V F, 3)
    p2f = pix_to_face[..., 0]
    out = fn[p2f.clamp_min(0)] * (p2f >= 0)[..., None].to(fn.dtype)  # (B V, H, W, 3)
    return out.reshape(verts.shape[0], n_views, *p2f.shape[1:], 3).permute(0, 1, 4, 2, 3)


def cross_view_losses(images: Tensor, verts: Tensor, faces: Tensor, poses: Tensor, cfg: CrossViewConfig,
                      flow_net=None, pairs: list[tuple[int, int]] | None = None,
                      backend: str = "auto", region: Tensor | None = None) -> CrossViewResult:
    """Photometric and flow-alignment losses over all ordered view pairs.

    Args:
        images: ``(B, V, 3, H, W)`` in [0, 1]. verts: ``(B, N, 3)`` mm (one mesh per subject) or
            ``(B, V, N, 3)`` (one per view, `renderer.warp.warp_geometry`).
        faces: ``(F, 3)``. poses: ``(B, V, 6)``. flow_net: a `mvf.losses.flow.FlowEstimator` or None
        (no alignment loss). pairs: ordered (a, b) view pairs, default all.
        region: optional ``(F,)`` bool, the triangles the losses may use (e.g. `inner_face_region`:
            without the scalp, ears and neck, which hair and clothes hide in real photos).
    """
    v = images.shape[1]
    if pairs is None:
        pairs = [(a, b) for a in range(v) for b in range(v) if a != b]
    geometry = warp_geometry(verts, faces, poses, images.shape[-2:], pairs=pairs, backend=backend)
    warped, valid = sample_pairs(images, geometry)
    if region is not None:
        p2f = geometry.pix_to_face[..., 0]
        in_region = (p2f >= 0) & region.to(p2f.device)[p2f.clamp_min(0) % faces.shape[0]]
        in_region = in_region.reshape(images.shape[0], v, 1, *images.shape[-2:])
        valid = valid * in_region[:, [b for _, b in pairs]].to(valid.dtype)
    mask = erode_covisible(valid, cfg.erode_px)
    targets = [b for _, b in pairs]
    target = images[:, targets]
    normals = pixel_normals(verts, faces, geometry.pix_to_face, v)[:, targets] if cfg.normalise == "shading" else None
    photo, err = photometric_loss(target, warped, mask, cfg, normals)
    if flow_net is not None:
        flow_loss, flow_field = flow_alignment_loss(flow_net, target, warped, mask, cfg)
    else:
        flow_loss, flow_field = photo.new_zeros(()), None
    return CrossViewResult(photo, flow_loss, pairs, warped, mask, err, flow_field)


def points_in_polygon(points: Tensor, polygon: Tensor) -> Tensor:
    """``(N,)`` bool: which ``(N, 2)`` points lie inside the closed ``(K, 2)`` polygon (even-odd rule)."""
    a, b = polygon, polygon.roll(-1, 0)
    x, y = points[:, None, 0], points[:, None, 1]
    crosses = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    t = (y - a[None, :, 1]) / (b[None, :, 1] - a[None, :, 1]).where(crosses, torch.ones_like(y))
    x_at = a[None, :, 0] + t * (b[None, :, 0] - a[None, :, 0])
    return ((crosses & (x < x_at)).sum(1) % 2) == 1


def inner_face_region(model, forehead_mm: float = 15.0) -> Tensor:
    """``(F,)`` bool: triangles of the inner face, where real photos show skin.

    A vertex belongs when, on the mean face seen from the front, it lies inside the polygon of
    the jawline (landmarks 0-16) and the brows (17-26) raised by ``forehead_mm``, and faces
    forwards (normal z > 0); a triangle belongs when all three of its vertices do.
    """
    mean = model.mean.detach().cpu()
    lm = mean[model.landmarks.cpu()]
    poly = torch.cat([lm[0:17, :2], lm[17:27, :2].flip(0) + torch.tensor([0.0, forehead_mm])])
    inside = points_in_polygon(mean[:, :2], poly)
    front = vertex_normals(mean, model.faces.cpu())[:, 2] > 0.0
    keep = inside & front
    return keep[model.faces.cpu()].all(1).to(model.faces.device)
