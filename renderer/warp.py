"""Cross-view geometry: co-visibility masks and image warps ``I_{A->B}`` between views.

For an ordered pair ``(a, b)`` of views of one subject, every pixel of view ``b`` covered by
the mesh has a model-space surface point (barycentric interpolation at the pixel centre);
projecting it with pose ``a`` gives where that point appears in image ``a``. ``I_{a->b}`` samples
image ``a`` there (bilinear, `grid_sample` with ``align_corners=False``), so it is image ``a``
re-rendered in view ``b``. The sample is valid where the pixel is covered in ``b`` and the point
is visible in ``a`` (`renderer.visibility.depth_test` with ``mode="all"``: its 2 x 2 footprint
lies inside image ``a`` and on ``a``'s visible surface within ``tol_mm``).

Everything is batched over subjects and pairs, and differentiable with respect to the vertices
and the poses (through the surface points and the projection into ``a``); the masks are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from pytorch3d.renderer.mesh.rasterizer import Fragments

from renderer.camera import DEPTH_OFFSET, pixels_to_grid, project_with_depth
from renderer.rotations import euler_to_matrix
from renderer.errors import RendererError
from renderer.config import DEFAULT_VIS_TOL_MM
from renderer.interp import interpolate_at
from renderer.raster import parse_image_size, pixel_faces, rasterize_pix_to_face
from renderer.visibility import planes_from_pixel_faces, test_points

Pair = tuple[int, int]


def all_pairs(n_views: int) -> list[Pair]:
    """Every ordered pair ``(a, b)``, ``a != b``, in row-major order."""
    return [(a, b) for a in range(n_views) for b in range(n_views) if a != b]


# The six ordered pairs of (front, left, right): (a, b) warps view a into view b.
ALL_PAIRS: list[Pair] = all_pairs(3)


@dataclass
class WarpGeometry:
    """Where each pixel of view ``b`` lands in view ``a``, for every pair.

    Attributes:
        pairs: the ``P`` ordered pairs ``(a, b)``.
        uv: ``(B, P, H, W, 2)`` pixel position in view ``a`` of the surface point seen at each
            pixel of view ``b`` (differentiable; 0 where ``b`` is not covered).
        depth: ``(B, P, H, W)`` its depth in view ``a``, mm (0 where ``b`` is not covered).
        valid: ``(B, P, H, W)`` bool: covered in ``b``, visible in ``a``, inside image ``a``.
        covered: ``(B, V, H, W)`` bool coverage of each view.
        pix_to_face: ``(B * V, H, W, 1)`` the rasterization of the views (row-major).
    """

    pairs: list[Pair]
    uv: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    covered: torch.Tensor
    pix_to_face: torch.Tensor

    def flow(self) -> torch.Tensor:
        """``(B, P, H, W, 2)`` displacement (pixels) from each pixel centre of ``b`` to ``uv``."""
        h, w = self.uv.shape[2:4]
        ys, xs = torch.meshgrid(torch.arange(h, device=self.uv.device, dtype=self.uv.dtype) + 0.5,
                                torch.arange(w, device=self.uv.device, dtype=self.uv.dtype) + 0.5,
                                indexing="ij")
        return self.uv - torch.stack([xs, ys], -1)


def _affine_cameras(poses: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 4)`` matrices mapping homogeneous model points to (u px, v px, depth mm)."""
    rot = euler_to_matrix(poses[:, 1:4])
    f = poses[:, 0, None]
    offset = torch.stack([poses[:, 4], poses[:, 5], torch.full_like(poses[:, 4], DEPTH_OFFSET)], -1)
    lin = torch.stack([f * rot[:, 0], -f * rot[:, 1], -rot[:, 2]], 1)  # (N, 3, 3)
    return torch.cat([lin, offset[:, :, None]], 2)


def _check_pairs(pairs: Sequence[Pair] | None, n_views: int) -> list[Pair]:
    pairs = all_pairs(n_views) if pairs is None else [(int(a), int(b)) for a, b in pairs]
    for a, b in pairs:
        if not (0 <= a < n_views and 0 <= b < n_views) or a == b:
            raise RendererError(f"view pair ({a}, {b}): need two different views in [0, {n_views})")
    return pairs


def warp_geometry(
    verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor, image_size,
    pairs: Sequence[Pair] | None = None, backend: str = "auto",
    fragments: Fragments | None = None, tol_mm: float = DEFAULT_VIS_TOL_MM,
) -> WarpGeometry:
    """Cross-view correspondences and validity for every pair (see the module docstring).

    Args:
        verts: ``(B, Nv, 3)`` model-space mm, one mesh per subject shared by its views, or
            ``(B, V, Nv, 3)``: one mesh per view with the same topology (e.g. pre-warped for a
            pinhole camera, `renderer.camera.Pinhole.view_verts`); a pixel's surface point then
            keeps its triangle and barycentrics and takes view ``a``'s vertices.
        faces: ``(F, 3)`` long.
        poses: ``(B, V, 6)``.
        image_size: ``(H, W)``.
        pairs: ordered ``(a, b)`` view-index pairs; default all ``V * (V - 1)``.
        backend: rasterizer backend when ``fragments`` is not given.
        fragments: precomputed `rasterize` output for the ``B * V`` views (row-major), or any
            object with its ``pix_to_face``. Only ``pix_to_face`` is used: barycentrics and
            depths are recomputed from ``verts`` and ``poses`` so gradients always reach them.
        tol_mm: depth tolerance of the visibility test, mm.
    """
    h, w = parse_image_size(image_size)
    per_view = verts.dim() == 4
    if (verts.dim() not in (3, 4) or poses.dim() != 3 or verts.shape[0] != poses.shape[0]
            or (per_view and verts.shape[1] != poses.shape[1])):
        raise RendererError(f"verts (B, Nv, 3) or (B, V, Nv, 3) and poses (B, V, 6) expected, got "
                            f"{tuple(verts.shape)} and {tuple(poses.shape)}")
    n_sub, n_views = poses.shape[:2]
    pairs = _check_pairs(pairs, n_views)
    n_pairs = len(pairs)
    dev = verts.device
    faces = faces.to(dev).long()
    verts_n = verts if per_view else verts[:, None].expand(n_sub, n_views, *verts.shape[1:])
    poses_n = poses.reshape(-1, 6)
    proj = project_with_depth(verts_n, poses).reshape(n_sub * n_views, -1, 3)  # (N, Nv, 3)
    if fragments is None:
        p2f = rasterize_pix_to_face(verts_n.detach().reshape(n_sub * n_views, -1, 3), faces,
                                    poses_n.detach(), (h, w), backend=backend)
    elif fragments.pix_to_face.shape[:3] != (n_sub * n_views, h, w):
        raise RendererError(f"fragments: expected {n_sub * n_views} views of {h}x{w}, got "
                       f"{tuple(fragments.pix_to_face.shape[:3])}")
    else:
        p2f = fragments.pix_to_face
    pf = pixel_faces(p2f, proj, faces)  # compact over covered pixels, differentiable corners
    nv = verts_n.shape[2]
    planes = planes_from_pixel_faces(pf)
    # For every pair (a, b) and subject s, the covered pixels of view b projected into view a.
    # Compact arrays are ordered by mesh (s * V + view), so each (pair, subject) is a slice.
    per_mesh = torch.bincount(pf.mesh, minlength=n_sub * n_views)
    counts = per_mesh.tolist()
    seg_idx = pf.idx.split(counts)
    if per_view:  # the point keeps b's triangle and barycentrics, on view a's mesh
        local = pf.vid - pf.mesh[:, None] * nv
        seg_bary, seg_local = pf.barycentric().split(counts), local.split(counts)
        flat_verts = verts_n.reshape(-1, 3)
    else:  # surface points from the subject's own vertices: vertex ids offset by subject, not view
        vid = pf.vid - (pf.mesh - pf.mesh // n_views)[:, None] * nv
        points = interpolate_at(pf.barycentric(), vid, verts.reshape(-1, 3))  # (M, 3) mm
        seg_points = points.split(counts)  # one view each; split has a single backward node
    cams = _affine_cameras(poses_n).unbind(0)  # N x (3, 4)
    uvd_parts, dense_parts, mesh_parts = [], [], []
    hw = h * w
    for p, (a, b) in enumerate(pairs):
        for s in range(n_sub):
            mb = s * n_views + b
            if counts[mb] == 0:
                continue
            cam = cams[s * n_views + a]
            if per_view:
                pts = interpolate_at(seg_bary[mb], seg_local[mb] + (s * n_views + a) * nv, flat_verts)
            else:
                pts = seg_points[mb]
            uvd_parts.append(torch.addmm(cam[:, 3], pts, cam[:, :3].t()))
            dense_parts.append(seg_idx[mb] + ((s * n_pairs + p) * hw - mb * hw))
            mesh_parts.append(torch.full((counts[mb],), s * n_views + a, device=dev, dtype=torch.long))
    flat_uv = proj.new_zeros(n_sub * n_pairs * hw, 2)
    flat_depth = proj.new_zeros(n_sub * n_pairs * hw)
    flat_valid = torch.zeros(n_sub * n_pairs * hw, dtype=torch.bool, device=dev)
    if uvd_parts:
        uvd = torch.cat(uvd_parts)  # (T, 3)
        dense = torch.cat(dense_parts)
        u, v, d = uvd.detach().unbind(1)
        flat_valid[dense] = test_points(planes, (h, w), torch.cat(mesh_parts), u, v, d, tol_mm, mode="all")
        uv, depth = uvd.split([2, 1], 1)
        flat_uv = flat_uv.index_put((dense,), uv)
        flat_depth = flat_depth.index_put((dense,), depth[:, 0])
    covered = (p2f[..., 0] >= 0).reshape(n_sub, n_views, h, w)
    return WarpGeometry(pairs=pairs, uv=flat_uv.reshape(n_sub, n_pairs, h, w, 2),
                        depth=flat_depth.reshape(n_sub, n_pairs, h, w),
                        valid=flat_valid.reshape(n_sub, n_pairs, h, w), covered=covered,
                        pix_to_face=p2f)


def covisibility(
    verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor, image_size,
    pairs: Sequence[Pair] | None = None, backend: str = "auto",
    fragments: Fragments | None = None, tol_mm: float = DEFAULT_VIS_TOL_MM,
) -> torch.Tensor:
    """Co-visibility masks ``(B, P, H, W)`` bool: pixels of view ``b`` whose surface point is
    visible in view ``a`` (and inside image ``a``), for each pair ``(a, b)``.

    Arguments as `warp_geometry`.
    """
    with torch.no_grad():
        return warp_geometry(verts, faces, poses, image_size, pairs, backend, fragments, tol_mm).valid


def sample_pairs(images: torch.Tensor, geometry: WarpGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images with precomputed `WarpGeometry`: ``(warped (B, P, C, H, W), valid (B, P, 1, H, W))``."""
    b, v, c, h, w = images.shape
    a_idx = torch.tensor([p[0] for p in geometry.pairs], device=images.device)
    n_pairs = a_idx.numel()
    src = images[:, a_idx].reshape(b * n_pairs, c, h, w)
    grid = pixels_to_grid(geometry.uv, (h, w)).reshape(b * n_pairs, h, w, 2).to(images.dtype)
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    valid = geometry.valid.to(images.dtype)[:, :, None]
    return warped.reshape(b, n_pairs, c, h, w) * valid, valid


def cross_view_warp(
    images: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor,
    pairs: Sequence[Pair] | None = None, backend: str = "auto",
    fragments: Fragments | None = None, tol_mm: float = DEFAULT_VIS_TOL_MM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp each view ``a`` into each view ``b``: ``I_{a->b}`` for every pair.

    Args:
        images: ``(B, V, C, H, W)`` float images.
        verts: ``(B, Nv, 3)`` model-space mm (one mesh per subject, shared by its views).
        faces: ``(F, 3)`` long.
        poses: ``(B, V, 6)``.
        pairs: ordered ``(a, b)`` pairs; default all ``V * (V - 1)`` (`ALL_PAIRS` for 3 views).
        backend, fragments, tol_mm: as `warp_geometry`.
    Returns:
        ``warped`` ``(B, P, C, H, W)``: image ``a`` rendered in view ``b`` (0 where invalid), and
        ``valid`` ``(B, P, 1, H, W)`` float in {0, 1}. Differentiable with respect to
        ``images``, ``verts`` and ``poses``.
    """
    if images.dim() != 5 or images.shape[:2] != poses.shape[:2]:
        raise RendererError(f"images: expected (B, V, C, H, W) matching poses {tuple(poses.shape[:2])}, "
                       f"got {tuple(images.shape)}")
    geometry = warp_geometry(verts, faces, poses, images.shape[-2:], pairs, backend, fragments, tol_mm)
    return sample_pairs(images, geometry)
