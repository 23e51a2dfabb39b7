"""Texture from photographs: per-vertex colours and a UV texture map, blended over the views.

Each view contributes where it sees the surface (z-buffer visibility), weighted by how squarely
it sees it: ``w = max(0, n · d)^power`` with ``n`` the unit surface normal and ``d`` the unit
direction towards that view's camera. Real cameras differ in exposure and white balance, so
each view's colours are first scaled per channel to agree with the front view where both see
the surface well (`exposure_gains`). Surface no view sees is filled from its surroundings (mesh
diffusion for vertices, push-pull for the UV map).

Visibility is rasterized once per view, in the frame the poses refer to (e.g. 224 px crops);
colours may be sampled from other images of the same views with their own poses (e.g.
higher-resolution crops of the photos), see `texture_from_views`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as tnf
from torch import Tensor

from renderer.camera import Pinhole, pixels_to_grid, project, view_directions, view_meshes
from renderer.raster import fast_pix_to_face, fragments_from_pix_to_face, rasterize
from renderer.visibility import vertex_visibility
from mvf.errors import MvfError
from mvf.face.mesh import fill_vertex_holes, vertex_normals


@dataclass
class TextureConfig:
    """size: UV map side (px). power: exponent on n·d. min_cos: ignore views seeing the surface
    more obliquely than this cosine. vis_tol_mm: z-buffer tolerance of the visibility test.
    match_exposure: scale each view's colours per channel to the first (front) view's."""

    size: int = 512
    power: float = 2.0
    min_cos: float = 0.1
    vis_tol_mm: float = 2.0
    match_exposure: bool = True

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 8192:
            raise MvfError(f"config key 'texture.size': must be in [16, 8192], got {self.size}")


@dataclass
class UVLayout:
    """The texels a UV layout covers: ``rows``, ``cols`` ``(M,)``, their triangle ``faces`` ``(M,)``
    and barycentrics ``bary`` ``(M, 3)`` in that triangle, for a ``size``² map."""

    size: int
    rows: Tensor
    cols: Tensor
    faces: Tensor
    bary: Tensor


@dataclass
class Texture:
    """Result of `texture_from_views`.

    colours ``(N, 3)`` per-vertex RGB in [0, 1] (holes filled); seen ``(N,)`` vertices some view
    saw; texture ``(S, S, 3)`` UV map (None without a layout) and texture_seen ``(S, S)``;
    weights ``(V, N)`` per-view blend weights; gains ``(V, 3)`` exposure gains applied.
    """

    colours: Tensor
    seen: Tensor
    texture: Tensor | None
    texture_seen: Tensor | None
    weights: Tensor
    gains: Tensor


def view_weights(verts: Tensor, faces: Tensor, poses: Tensor, image_size: tuple[int, int],
                 cfg: TextureConfig, backend: str = "auto", camera: Pinhole | None = None) -> Tensor:
    """Per-view, per-vertex blend weights ``(V, N)``: visibility times ``max(0, n·d)^power``.

    Args: verts ``(N, 3)`` mm, faces ``(F, 3)``, poses ``(V, 6)``, image_size ``(H, W)``;
    camera: the fit's `Pinhole` (None: weak perspective).
    """
    vv = view_meshes(verts, poses, camera)
    frags = rasterize(vv, faces, poses, image_size, backend=backend)
    visible = vertex_visibility(vv, faces, poses, frags, tol_mm=cfg.vis_tol_mm)
    uv = project(vv, poses)
    h, w = image_size
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
    cos = (vertex_normals(verts, faces) @ view_directions(poses).T).T  # (V, N)
    weight = torch.where(cos > cfg.min_cos, cos.clamp_min(0.0) ** cfg.power, torch.zeros_like(cos))
    return weight * visible.to(weight.dtype) * inside.to(weight.dtype)


def sample_images(images: Tensor | Sequence[Tensor], uv: Tensor) -> Tensor:
    """Bilinear colours ``(V, M, 3)`` of images ``(V, 3, H, W)`` (or V tensors ``(3, H_v, W_v)``)
    at pixel positions ``(V, M, 2)``."""
    if isinstance(images, Tensor) and images.dim() == 4:
        grid = pixels_to_grid(uv, images.shape[-2:])[:, :, None]  # (V, M, 1, 2)
        out = tnf.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border",
                              align_corners=False)
        return out[..., 0].permute(0, 2, 1)
    return torch.stack([sample_images(img[None], p[None])[0] for img, p in zip(images, uv)])


def exposure_gains(colours: Tensor, weights: Tensor, reference: int = 0) -> Tensor:
    """Per-view, per-channel gains ``(V, 3)`` that bring each view's colours to the reference view's.

    ``gain_v = Σ w_ref w_v c_ref / Σ w_ref w_v c_v`` over the vertices both see, with colours
    ``(V, N, 3)`` and weights ``(V, N)``; 1 where a view shares too little with the reference.
    """
    both = weights[reference][None] * weights  # (V, N)
    num = (both[..., None] * colours[reference][None]).sum(1)
    den = (both[..., None] * colours).sum(1)
    enough = both.sum(1, keepdim=True) > 1.0  # about one vertex seen squarely by both
    gains = torch.where(enough & (den > 1e-6), num / den.clamp_min(1e-6), torch.ones_like(num))
    return gains.clamp(0.5, 2.0)


def uv_layout(verts_uvs: Tensor, faces_uvs: Tensor, size: int) -> UVLayout:
    """Rasterize a UV layout into a ``size``² map (texel centres; one triangle per texel).

    UV (0, 0) is the bottom-left of the texture image (OBJ convention): row = (1 - v) * size.
    """
    proj = torch.stack([verts_uvs[:, 0] * size, (1.0 - verts_uvs[:, 1]) * size,
                        torch.ones_like(verts_uvs[:, 0])], -1)[None]  # depth 1: in front of the camera
    with torch.no_grad():
        p2f = fast_pix_to_face(proj, faces_uvs, (size, size))
        frags = fragments_from_pix_to_face(p2f, proj, faces_uvs)
    p2f = p2f[0, ..., 0]
    covered = p2f >= 0
    rows, cols = covered.nonzero(as_tuple=True)
    return UVLayout(size, rows, cols, p2f[covered], frags.bary_coords[0, ..., 0, :][covered])


def push_pull_fill(image: Tensor, mask: Tensor) -> Tensor:
    """Fill ``image`` ``(C, H, W)`` where ``mask`` ``(H, W)`` is 0 from a mask-weighted pyramid."""
    levels = [(image * mask, mask.float())]
    while min(levels[-1][1].shape) > 1:
        img, m = levels[-1]
        img2 = tnf.avg_pool2d(img[None], 2, ceil_mode=True)[0]
        m2 = tnf.avg_pool2d(m[None, None], 2, ceil_mode=True)[0, 0]
        levels.append((img2, m2))
    filled = levels[-1][0] / levels[-1][1].clamp_min(1e-8)
    for img, m in reversed(levels[:-1]):
        up = tnf.interpolate(filled[None], size=m.shape, mode="bilinear", align_corners=False)[0]
        own = img / m.clamp_min(1e-8)
        filled = torch.where(m[None] > 1e-6, own, up)
    return torch.where(mask[None] > 0, image, filled)


@torch.no_grad()
def texture_from_views(verts: Tensor, faces: Tensor, poses: Tensor, image_size: tuple[int, int],
                       images: Tensor | Sequence[Tensor], image_poses: Tensor | None = None,
                       cfg: TextureConfig | None = None, layout: UVLayout | None = None,
                       backend: str = "auto", camera: Pinhole | None = None) -> Texture:
    """Per-vertex colours and (with ``layout``) a UV map, from one visibility pass per view.

    Args:
        verts: ``(N, 3)`` mm. faces: ``(F, 3)``.
        poses: ``(V, 6)`` and image_size ``(H, W)``: the frame visibility is rasterized in.
        images: ``(V, 3, H', W')`` or V tensors ``(3, H_v, W_v)`` in [0, 1] to take colours from.
        image_poses: ``(V, 6)`` poses of ``images`` (default ``poses``: the same frame).
        cfg: `TextureConfig`. layout: `uv_layout` of the mesh's UVs (None: no UV map).
        camera: the `renderer.camera.Pinhole` the poses were fitted through (None: weak perspective).
    """
    cfg = cfg or TextureConfig()
    image_poses = poses if image_poses is None else image_poses
    n_views = poses.shape[0]
    weights = view_weights(verts, faces, poses, image_size, cfg, backend, camera)  # (V, N)
    uv = project(view_meshes(verts, image_poses, camera), image_poses)
    cols = sample_images(images, uv)  # (V, N, 3)
    gains = exposure_gains(cols, weights) if cfg.match_exposure and n_views > 1 else cols.new_ones(n_views, 3)
    total = weights.sum(0)
    colours = (weights[..., None] * cols * gains[:, None]).sum(0) / total.clamp_min(1e-8)[:, None]
    seen = total > 1e-6
    colours = fill_vertex_holes(colours, seen, faces).clamp(0.0, 1.0)
    tex = tex_seen = None
    if layout is not None:
        corner = faces[layout.faces]  # (M, 3) mesh vertex ids of each texel's triangle
        points = (layout.bary[..., None] * verts[corner]).sum(1)  # (M, 3) mm
        texel_w = (layout.bary[None] * weights[:, corner]).sum(-1)  # (V, M)
        tuv = project(view_meshes(points, image_poses, camera), image_poses)
        tcols = sample_images(images, tuv) * gains[:, None]  # (V, M, 3)
        ttotal = texel_w.sum(0)
        blended = (texel_w[..., None] * tcols).sum(0) / ttotal.clamp_min(1e-8)[:, None]
        s = layout.size
        tex = colours.new_zeros(3, s, s)
        tex_seen = torch.zeros(s, s, dtype=torch.bool, device=colours.device)
        tex[:, layout.rows, layout.cols] = blended.T
        tex_seen[layout.rows, layout.cols] = ttotal > 1e-6
        tex = push_pull_fill(tex, tex_seen.to(tex.dtype)).permute(1, 2, 0).clamp(0.0, 1.0)
    return Texture(colours, seen, tex, tex_seen, weights, gains)


def vertex_colours(verts: Tensor, faces: Tensor, images: Tensor, poses: Tensor,
                   cfg: TextureConfig | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Per-vertex colours ``(N, 3)`` in [0, 1] blended from the views, holes filled.

    Args: verts ``(N, 3)`` mm; faces ``(F, 3)``; images ``(V, 3, H, W)``; poses ``(V, 6)``.
    Returns: (colours, seen) with ``seen`` ``(N,)`` bool: the vertices some view saw.
    """
    out = texture_from_views(verts, faces, poses, images.shape[-2:], images, cfg=cfg, backend=backend)
    return out.colours, out.seen


def uv_texture(verts: Tensor, faces: Tensor, verts_uvs: Tensor, faces_uvs: Tensor, images: Tensor,
               poses: Tensor, cfg: TextureConfig | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """A UV texture map blended from the views.

    Each texel's surface point (barycentric in its UV triangle) is projected into every view and
    sampled there; the per-view weights are the vertex weights of `view_weights` interpolated
    over the triangle. Texels of the layout no view sees, and the gaps between UV islands, are
    filled by push-pull.

    Returns: (texture ``(S, S, 3)`` in [0, 1], seen ``(S, S)`` bool).
    """
    cfg = cfg or TextureConfig()
    layout = uv_layout(verts_uvs, faces_uvs, cfg.size)
    out = texture_from_views(verts, faces, poses, images.shape[-2:], images, cfg=cfg, layout=layout,
                             backend=backend)
    return out.texture, out.texture_seen
