"""Depth tests against the z-buffer: per-vertex visibility and visibility of arbitrary points.

A point ``(u, v, depth)`` of view ``n`` is tested against the visible surface of that view.
The surface depth at ``(u, v)`` comes from the plane of the face that won a nearby pixel,
evaluated at ``(u, v)`` itself (not at the pixel centre), so points on the visible surface
match it exactly whatever their sub-pixel position or the surface's slope. The point passes
at a pixel when that pixel is covered and ``depth <= surface_depth + tol_mm``. The pixels
consulted are the 2 x 2 bilinear footprint of ``(u, v)`` (the four centres around it):

* ``mode="any"`` (vertex visibility): visible if any footprint pixel passes, so vertices on the
  silhouette, whose own pixel centre may fall just outside the mesh, still count;
* ``mode="all"`` (co-visibility and warps): visible only if all four pass, so a bilinear
  sample at ``(u, v)`` mixes nothing but that surface: this drops points within a pixel of a
  silhouette or occlusion edge and of the image border.
"""
from __future__ import annotations

import torch
from pytorch3d.renderer.mesh.rasterizer import Fragments

from renderer.camera import project_with_depth
from renderer.config import DEFAULT_VIS_TOL_MM
from renderer.raster import PixelFaces, flatten_views, pixel_faces


@torch.no_grad()
def planes_from_pixel_faces(pf: PixelFaces) -> torch.Tensor:
    """``(N * H * W, 3)``: depth at the pixel centre (``-inf`` where empty), and its
    derivatives along u and v (mm per pixel), of the visible face's plane."""
    n, h, w = pf.shape
    u = [t.detach() for t in pf.u]
    v = [t.detach() for t in pf.v]
    z = [t.detach() for t in pf.z]
    area = (u[2] - u[0]) * (v[1] - v[0]) - (v[2] - v[0]) * (u[1] - u[0])
    depth = torch.zeros_like(area)
    grad_u = torch.zeros_like(area)
    grad_v = torch.zeros_like(area)
    for k in range(3):  # barycentric k's edge runs from vertex k+1 to vertex k+2
        a, b = (k + 1) % 3, (k + 2) % 3
        du, dv = u[b] - u[a], v[b] - v[a]
        depth += ((pf.pu - u[a]) * dv - (pf.pv - v[a]) * du) * z[k]
        grad_u += dv * z[k]
        grad_v -= du * z[k]
    out = area.new_zeros(n * h * w, 3)
    out[:, 0] = float("-inf")
    out[pf.idx] = torch.stack([depth, grad_u, grad_v], 1) / area[:, None]
    return out


def surface_planes(fragments: Fragments, proj: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Depth plane of the visible face at every pixel: ``(N, H, W, 3)``.

    Args:
        fragments: rasterization of the ``N`` meshes (only ``pix_to_face`` is used).
        proj: ``(N, Nv, 3)`` projected vertices (u px, v px, depth mm) of those meshes.
        faces: ``(F, 3)`` long.
    Returns:
        ``(depth at the pixel centre, d depth / du, d depth / dv)`` in mm and mm per pixel;
        depth ``-inf`` on empty pixels (nothing there can be visible).
    """
    n, h, w, _ = fragments.pix_to_face.shape
    with torch.no_grad():
        planes = planes_from_pixel_faces(pixel_faces(fragments.pix_to_face, proj.detach(), faces))
    return planes.reshape(n, h, w, 3)


@torch.no_grad()
def test_points(planes: torch.Tensor, image_size: tuple[int, int], mesh: torch.Tensor,
                u: torch.Tensor, v: torch.Tensor, d: torch.Tensor,
                tol_mm: float = DEFAULT_VIS_TOL_MM, mode: str = "all") -> torch.Tensor:
    """Depth test of points ``(T,)`` (u px, v px, depth mm) in views ``mesh`` ``(T,)``.

    ``planes`` is `planes_from_pixel_faces` output ``(N * H * W, 3)`` for ``(H, W)`` images.
    Returns ``(T,)`` bool.
    """
    if mode not in ("all", "any"):
        raise ValueError(f"mode must be 'all' or 'any', got {mode!r}")
    h, w = image_size
    x0 = torch.floor(u - 0.5)
    y0 = torch.floor(v - 0.5)
    x_ok = [(x0 >= 0) & (x0 <= w - 1), (x0 >= -1) & (x0 <= w - 2)]  # False for NaN
    y_ok = [(y0 >= 0) & (y0 <= h - 1), (y0 >= -1) & (y0 <= h - 2)]
    xi = x0.clamp(-1, w - 1).nan_to_num(0.0).long()
    yi = y0.clamp(-1, h - 1).nan_to_num(0.0).long()
    base = mesh * (h * w) + yi * w + xi
    fu = u - x0 - 0.5  # offset from the footprint's first pixel centre
    fv = v - y0 - 0.5
    limit = planes.shape[0] - 1
    result = None
    for dy in (0, 1):
        for dx in (0, 1):
            inside = x_ok[dx] & y_ok[dy]
            at = (base + (dy * w + dx)).clamp(0, limit)
            z, gu, gv = planes.index_select(0, at).unbind(1)
            # -inf depth on empty pixels: nothing there passes
            ok = inside & (d <= z + gu * (fu - dx) + gv * (fv - dy) + tol_mm)
            if result is None:
                result = ok
            elif mode == "all":
                result &= ok
            else:
                result |= ok
    return result


def depth_test(planes: torch.Tensor, mesh_ids: torch.Tensor, uvd: torch.Tensor,
               tol_mm: float = DEFAULT_VIS_TOL_MM, mode: str = "all") -> torch.Tensor:
    """Whether points lie on (not behind) the visible surface of their view.

    Args:
        planes: ``(N, H, W, 3)`` from `surface_planes`.
        mesh_ids: ``(Q,)`` long, the view (index into ``planes``) of each point set.
        uvd: ``(Q, M, 3)`` points (u px, v px, depth mm) in that view.
        tol_mm: how far behind the surface a point may lie, mm.
        mode: ``"all"`` or ``"any"`` of the 2 x 2 footprint pixels must pass (module docstring).
    Returns:
        ``(Q, M)`` bool.
    """
    n, h, w, _ = planes.shape
    q, m, _ = uvd.shape
    mesh = mesh_ids[:, None].expand(q, m).reshape(-1)
    u, v, d = uvd.detach().reshape(-1, 3).unbind(-1)
    return test_points(planes.reshape(-1, 3), (h, w), mesh, u, v, d, tol_mm, mode).reshape(q, m)


@torch.no_grad()
def vertex_visibility(verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor,
                      fragments: Fragments, tol_mm: float = DEFAULT_VIS_TOL_MM) -> torch.Tensor:
    """Per-vertex visibility by a depth test against the rasterized surface.

    A vertex is visible in a view when, at one of the four pixels around its projection,
    the visible face's plane lies no more than ``tol_mm`` in front of it (see the module
    docstring). Vertices projecting outside the image are not visible.

    Args:
        verts: ``(N, Nv, 3)`` or ``(B, V, Nv, 3)`` model-space mm (as rasterized).
        faces: ``(F, 3)`` long.
        poses: ``(N, 6)`` or ``(B, V, 6)``.
        fragments: `renderer.rasterize` output for these meshes and poses.
        tol_mm: depth tolerance, mm.
    Returns:
        ``(N, Nv)`` bool.
    """
    verts, poses = flatten_views(verts, poses)
    n, nv = verts.shape[:2]
    h, w = fragments.pix_to_face.shape[1:3]
    proj = project_with_depth(verts, poses)
    planes = planes_from_pixel_faces(pixel_faces(fragments.pix_to_face, proj, faces.to(verts.device).long()))
    mesh = torch.arange(n, device=verts.device).repeat_interleave(nv)
    u, v, d = proj.reshape(-1, 3).unbind(-1)
    return test_points(planes, (h, w), mesh, u, v, d, tol_mm, mode="any").reshape(n, nv)
