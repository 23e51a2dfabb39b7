"""Per-pixel quantities from Fragments: masks, interpolated vertex attributes, surface points."""
from __future__ import annotations

import torch
from pytorch3d.renderer.mesh.rasterizer import Fragments

from renderer.errors import RendererError


def pixel_mask(fragments: Fragments) -> torch.Tensor:
    """``(N, H, W)`` bool: pixels covered by the mesh (hard coverage)."""
    return fragments.pix_to_face[..., 0] >= 0


def interpolate_vertex_attr(fragments: Fragments, attr: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel with the fragments' barycentrics.

    Args:
        fragments: from `renderer.rasterize` (``K = 1``) for ``N`` meshes sharing ``faces``.
        attr: ``(N, Nv, C)`` per-vertex values (or ``(1, Nv, C)`` shared by all meshes).
        faces: ``(F, 3)`` long, the faces that were rasterized.
    Returns:
        ``(N, H, W, C)``: ``sum_k bary_k * attr[face_k]`` on covered pixels, 0 elsewhere;
        differentiable with respect to ``attr`` and the barycentrics.
    """
    p2f = fragments.pix_to_face
    n, h, w, _ = p2f.shape
    if attr.dim() != 3 or attr.shape[0] not in (1, n):
        raise RendererError(f"attr: expected ({n}, Nv, C), got {tuple(attr.shape)}")
    if attr.shape[0] == 1 and n > 1:
        attr = attr.expand(n, -1, -1)
    nv, c = attr.shape[1], attr.shape[2]
    nf = faces.shape[0]
    flat = p2f.reshape(-1)
    idx = (flat >= 0).nonzero().squeeze(1)
    g = flat.index_select(0, idx)
    mesh = g // nf
    vid = faces.index_select(0, g - mesh * nf) + (mesh * nv)[:, None]  # (M, 3)
    bary = fragments.bary_coords.reshape(-1, 3).index_select(0, idx)  # (M, 3)
    vals = interpolate_at(bary, vid, attr.reshape(-1, c))
    out = vals.new_zeros(n * h * w, c).index_put((idx,), vals)
    return out.reshape(n, h, w, c)


def interpolate_at(bary: torch.Tensor, vid: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(M, C)`` = ``sum_k bary[:, k] * table[vid[:, k]]`` for bary ``(M, 3)``, vid ``(M, 3)``,
    table ``(T, C)``."""
    b0, b1, b2 = bary.unbind(1)
    out = b0[:, None] * table.index_select(0, vid[:, 0])
    out = out + b1[:, None] * table.index_select(0, vid[:, 1])
    return out + b2[:, None] * table.index_select(0, vid[:, 2])


def surface_points(fragments: Fragments, verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``(N, H, W, 3)`` model-space surface point (mm) at each pixel centre, 0 where empty.

    ``verts`` is ``(N, Nv, 3)`` (or ``(1, Nv, 3)``), the meshes that were rasterized.
    Differentiable with respect to ``verts`` and (through the barycentrics) the poses.
    """
    return interpolate_vertex_attr(fragments, verts, faces)
