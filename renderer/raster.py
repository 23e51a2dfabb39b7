"""Rasterization of weak-perspective views into PyTorch3D `Fragments`, with two backends.

* ``pytorch3d``: PyTorch3D's `MeshRasterizer` with the cameras of `renderer.camera.to_pytorch3d`
  (the reference, and the default on CUDA).
* ``fast``: vectorised torch (the default on the CPU). Every triangle's pixel bounding box is
  enumerated (in chunks of bounded size), pixel centres are tested against the triangle with
  PyTorch3D's edge functions and rules, and the nearest triangle per pixel is kept with one
  ``scatter_reduce(amin)`` on a key packing (float32 depth bits, packed face id). Ties in depth
  go to the smaller face id, as in PyTorch3D. The discrete part runs without autograd; the
  barycentrics, depths and distances of the winning faces are then recomputed in torch from
  the projected vertices (`fragments_from_pix_to_face`) so they are differentiable with
  respect to the vertices and the poses.

PyTorch3D's rules reproduced (blur 0, one face per pixel, no culling, no perspective
correction): pixel ``(i, j)`` is sampled at its centre ``(i + 0.5, j + 0.5)``; a triangle
covers it when all three barycentrics are strictly positive; barycentrics are
``edge / (area + 1e-8)`` with areas in NDC units; triangles with ``|area| <= 1e-8`` (NDC) or
a vertex at depth ``< 1e-8`` are skipped; points with depth ``< 0`` are ignored.

`Fragments` fields, for ``N`` meshes at ``(H, W)``, one face per pixel (``K = 1``):

* ``pix_to_face`` ``(N, H, W, 1)`` long: packed face id ``n * F + f``, ``-1`` where empty.
* ``zbuf`` ``(N, H, W, 1)``: depth in mm as `renderer.camera.project_with_depth` (``1000 - (Rv)_z``,
  smaller is nearer) of the surface at the pixel centre, ``-1`` where empty.
* ``bary_coords`` ``(N, H, W, 1, 3)``: barycentrics of the pixel centre in the face's
  vertex order, ``-1`` where empty.
* ``dists``: with the ``fast`` backend ``None`` unless ``with_dists=True``, then
  ``(N, H, W, 1)`` PyTorch3D's signed squared distance (NDC units²) from the pixel centre to
  the face's boundary, negative inside (every covered pixel is inside with hard coverage),
  ``-1`` where empty. The ``pytorch3d`` backend always fills it. Nothing in mvf uses it (hard
  shaders do not); it is there for PyTorch3D's soft shaders.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
from pytorch3d.renderer.mesh.rasterizer import Fragments
from pytorch3d.structures import Meshes

from renderer.camera import project_with_depth, to_pytorch3d
from renderer.errors import RendererError
from renderer.config import resolve_backend

KEPS = 1e-8  # PyTorch3D's kEpsilon, in NDC units (areas) and depth units
DEFAULT_MAX_CANDIDATES = 1 << 22  # pixel candidates enumerated per chunk in the fast backend

def parse_image_size(image_size) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair; `RendererError` if not positive."""
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(s) for s in image_size)
    if h <= 0 or w <= 0:
        raise RendererError(f"image_size {image_size}: must be positive")
    return h, w


def flatten_views(verts: torch.Tensor, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten ``(B, V, Nv, 3)``/``(B, V, 6)`` to one mesh per view: ``(N, Nv, 3)``, ``(N, 6)``.

    ``verts`` may also be ``(N, Nv, 3)``, or ``(1, Nv, 3)`` / ``(Nv, 3)`` shared by all poses.
    """
    if verts.dim() == 2:
        verts = verts[None]
    if verts.dim() == 4:
        verts = verts.reshape(-1, *verts.shape[2:])
    poses = poses.reshape(-1, 6)
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise RendererError(f"verts: expected (N, Nv, 3) or (B, V, Nv, 3), got {tuple(verts.shape)}")
    if verts.shape[0] == 1 and poses.shape[0] > 1:
        verts = verts.expand(poses.shape[0], -1, -1)
    if verts.shape[0] != poses.shape[0]:
        raise RendererError(f"verts and poses disagree on the number of views: {verts.shape[0]} vs {poses.shape[0]}")
    return verts, poses


def _check_faces(faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise RendererError(f"faces: expected (F, 3), got {tuple(faces.shape)}")
    faces = faces.long()
    if faces.numel() and (faces.min() < 0 or faces.max() >= n_verts):
        raise RendererError(f"faces: vertex ids must lie in [0, {n_verts}), got [{int(faces.min())}, {int(faces.max())}]")
    return faces


def empty_fragments(n: int, image_size: tuple[int, int], like: torch.Tensor) -> Fragments:
    """Fragments of ``n`` images with nothing drawn."""
    h, w = image_size
    return Fragments(
        pix_to_face=torch.full((n, h, w, 1), -1, dtype=torch.long, device=like.device),
        zbuf=like.new_full((n, h, w, 1), -1.0),
        bary_coords=like.new_full((n, h, w, 1, 3), -1.0),
        dists=like.new_full((n, h, w, 1), -1.0),
    )


def rasterize(
    verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor, image_size,
    backend: str = "auto", with_dists: bool = False,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Fragments:
    """Rasterize one mesh per view with hard coverage (one face per pixel).

    Args:
        verts: ``(N, Nv, 3)`` model-space mm, one mesh per view, or ``(B, V, Nv, 3)``
            (flattened to ``N = B * V`` in row-major order), or ``(1, Nv, 3)`` shared.
        faces: ``(F, 3)`` long vertex ids, shared by all meshes.
        poses: ``(N, 6)`` or ``(B, V, 6)`` weak-perspective poses (`renderer.camera`).
        image_size: ``(H, W)`` pixels (or one int for square images).
        backend: ``auto`` (``fast`` on CPU, ``pytorch3d`` on CUDA), ``fast`` or ``pytorch3d``.
        with_dists: ``fast`` only: compute ``dists`` (else None; ``pytorch3d`` always has them).
        max_candidates: ``fast`` only: pixel candidates per chunk (bounds memory).
    Returns:
        PyTorch3D `Fragments` as described in the module docstring; ``bary_coords``, ``zbuf``
        and ``dists`` are differentiable with respect to ``verts`` and ``poses``.
    """
    image_size = parse_image_size(image_size)
    verts, poses = flatten_views(verts, poses)
    faces = _check_faces(faces.to(verts.device), verts.shape[1])
    if faces.shape[0] == 0 or verts.shape[0] == 0:
        return empty_fragments(verts.shape[0], image_size, verts)
    which = resolve_backend(backend, verts.device)
    if which == "pytorch3d":
        return _rasterize_pytorch3d(verts, faces, poses, image_size)
    proj = project_with_depth(verts, poses)
    pix_to_face = fast_pix_to_face(proj, faces, image_size, max_candidates)
    return fragments_from_pix_to_face(pix_to_face, proj, faces, with_dists)


@torch.no_grad()
def rasterize_pix_to_face(verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor, image_size,
                          backend: str = "auto") -> torch.Tensor:
    """Only the ``(N, H, W, 1)`` ``pix_to_face`` of `rasterize` (skips barycentrics)."""
    image_size = parse_image_size(image_size)
    verts, poses = flatten_views(verts, poses)
    faces = _check_faces(faces.to(verts.device), verts.shape[1])
    if faces.shape[0] == 0 or verts.shape[0] == 0:
        return empty_fragments(verts.shape[0], image_size, verts).pix_to_face
    if resolve_backend(backend, verts.device) == "pytorch3d":
        return _rasterize_pytorch3d(verts, faces, poses, image_size).pix_to_face
    return fast_pix_to_face(project_with_depth(verts, poses), faces, image_size)


def _rasterize_pytorch3d(verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor,
                         image_size: tuple[int, int]) -> Fragments:
    """PyTorch3D's `MeshRasterizer` with `to_pytorch3d` cameras (float32)."""
    n, f = verts.shape[0], faces.shape[0]
    verts32 = verts.float()
    meshes = Meshes(verts=verts32, faces=faces[None].expand(n, f, 3))
    settings = RasterizationSettings(
        image_size=image_size, blur_radius=0.0, faces_per_pixel=1, perspective_correct=False,
        cull_backfaces=False, max_faces_per_bin=max(10000, f))
    cameras = to_pytorch3d(poses.float(), image_size)
    return MeshRasterizer(cameras=cameras, raster_settings=settings)(meshes)


def _corners(proj: torch.Tensor, faces: torch.Tensor) -> list[torch.Tensor]:
    """Per-corner planar coordinates of every face of every mesh.

    Args: proj ``(N, Nv, 3)``; faces ``(F, 3)``.
    Returns: ``[u0, u1, u2, v0, v1, v2, z0, z1, z2]``, each ``(N * F,)`` contiguous.
    """
    planar = proj.permute(2, 0, 1)  # (3, N, Nv)
    out: list[torch.Tensor] = [None] * 9  # type: ignore[list-item]
    for k in range(3):
        c = planar.index_select(2, faces[:, k]).reshape(3, -1)  # (3, N * F)
        out[k], out[3 + k], out[6 + k] = c[0], c[1], c[2]
    return out


@torch.no_grad()
def fast_pix_to_face(proj: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int],
                     max_candidates: int = DEFAULT_MAX_CANDIDATES) -> torch.Tensor:
    """Nearest face per pixel centre: ``(N, H, W, 1)`` packed face ids, ``-1`` where empty.

    Faces are grouped by the pixel count of their bounding box, rounded up to a power of two
    (so at most half of a group's candidates are padding), and each group is evaluated by
    broadcasting, without per-candidate gathers. Within a face, barycentrics and depth are
    affine in the pixel offset from the box's first pixel centre, where they are evaluated
    with PyTorch3D's edge functions.

    Args:
        proj: ``(N, Nv, 3)`` projected vertices (u px, v px, depth mm), e.g. from
            `renderer.camera.project_with_depth`.
        faces: ``(F, 3)`` long.
        image_size: ``(H, W)``.
        max_candidates: upper bound on the pixel candidates handled at once.
    """
    h, w = image_size
    n = proj.shape[0]
    nf = faces.shape[0]
    dev = proj.device
    u0, u1, u2, v0, v1, v2, z0, z1, z2 = _corners(proj.detach(), faces)
    # Signed area, PyTorch3D's EdgeFunctionForward(v2, v0, v1). NDC = pixels * 2 / S with both
    # axes flipped, so NDC areas are pixel areas * 4 / S^2 with the same sign.
    area = (u2 - u0) * (v1 - v0) - (v2 - v0) * (u1 - u0)
    s = float(min(h, w))
    eps_px = KEPS * s * s / 4.0
    keep = (area.abs() > eps_px) & (torch.minimum(torch.minimum(z0, z1), z2) >= KEPS)
    # Pixel index ranges whose centres (i + 0.5) fall inside the bounding box.
    umin, umax = torch.minimum(torch.minimum(u0, u1), u2), torch.maximum(torch.maximum(u0, u1), u2)
    vmin, vmax = torch.minimum(torch.minimum(v0, v1), v2), torch.maximum(torch.maximum(v0, v1), v2)
    x_lo = torch.ceil((umin - 0.5).clamp(-1.0, float(w))).clamp_min(0.0)
    x_hi = torch.floor((umax - 0.5).clamp(-1.0, float(w))).clamp_max(w - 1.0)
    y_lo = torch.ceil((vmin - 0.5).clamp(-1.0, float(h))).clamp_min(0.0)
    y_hi = torch.floor((vmax - 0.5).clamp(-1.0, float(h))).clamp_max(h - 1.0)
    nx = (x_hi - x_lo + 1.0).clamp_min(0.0)
    counts = nx * (y_hi - y_lo + 1.0).clamp_min(0.0)
    counts = torch.where(keep, counts, torch.zeros_like(counts))
    best = torch.full((n * h * w,), torch.iinfo(torch.int64).max, dtype=torch.long, device=dev)
    gids = counts.nonzero().squeeze(1)
    if gids.numel():
        # Order faces by bucket (box area rounded up to a power of two) so groups are slices.
        bucket = torch.ceil(torch.log2(counts[gids])).long()
        n_buckets = int(bucket.max()) + 1
        members = [(bucket == b).nonzero().squeeze(1) for b in range(n_buckets)]
        sizes = [int(m.numel()) for m in members]
        gids = gids[torch.cat(members)]
        g = [t[gids] for t in (u0, u1, u2, v0, v1, v2, z0, z1, z2, area, x_lo, y_lo, nx, counts)]
        tu, tv, tz = g[0:3], g[3:6], g[6:9]
        den, ox, oy, nx_g, cnt = g[9] + eps_px, g[10], g[11], g[12], g[13]
        ou, ov = ox + 0.5, oy + 0.5
        # Barycentric k at the first box pixel centre and its steps per pixel in u and v;
        # edge k runs from vertex k+1 to vertex k+2 (PyTorch3D's w0 = E(p, v1, v2) / den).
        rows = []
        for k in range(3):
            a, b = (k + 1) % 3, (k + 2) % 3
            du, dv = tu[b] - tu[a], tv[b] - tv[a]
            rows.append(torch.stack([((ou - tu[a]) * dv - (ov - tv[a]) * du) / den, dv / den, -du / den]))
        rows.append(rows[0] * tz[0] + rows[1] * tz[1] + rows[2] * tz[2])  # depth
        coef = torch.stack(rows)  # (4 quantities, 3: value / d/du / d/dv, G')
        base = (gids // nf) * (h * w) + oy.long() * w + ox.long()
        start = 0
        for b, size in enumerate(sizes):
            slots = 1 << b
            step = max(1, max_candidates // slots)
            for i in range(start, start + size, step):
                j = min(i + step, start + size)
                _raster_group(coef[:, :, i:j], nx_g[i:j], cnt[i:j], base[i:j], gids[i:j], slots, w, best)
            start += size
    empty = best == torch.iinfo(torch.int64).max
    pix_to_face = best.bitwise_and_(0xFFFFFFFF).masked_fill_(empty, -1)
    return pix_to_face.reshape(n, h, w, 1)


def _raster_group(coef: torch.Tensor, nx: torch.Tensor, count: torch.Tensor, base: torch.Tensor,
                  gid: torch.Tensor, slots: int, w: int, best: torch.Tensor) -> None:
    """Test ``slots`` box pixels of each face in a group; fold hits into ``best`` (in place).

    coef: ``(4, 3, G)``: (w0, w1, w2, depth) x (value at the first pixel, d/du, d/dv);
    nx, count: ``(G,)`` box widths and areas (``<= slots``, float); base: ``(G,)`` flat index
    of the box's first pixel; gid: ``(G,)`` packed face ids.
    """
    k = torch.arange(slots, device=coef.device, dtype=coef.dtype)[:, None]  # (slots, 1)
    row = torch.floor((k + 0.5) / nx)  # (slots, G), exact for small integers
    col = k - row * nx
    vals = []
    for q in range(4):
        val = col * coef[q, 1]
        val.addcmul_(row, coef[q, 2]).add_(coef[q, 0])
        vals.append(val)
    hit = torch.minimum(torch.minimum(vals[0], vals[1]), vals[2]) > 0
    hit &= vals[3] >= 0
    hit &= k < count
    slot, face = hit.nonzero().unbind(1)
    if face.numel() == 0:
        return
    # Key: float32 depth bits (monotonic for depth >= 0; +0.0 normalises -0.0) above the face id.
    d32 = (vals[3][slot, face].float() + 0.0).contiguous()
    key = (d32.view(torch.int32).long() << 32) | gid[face]
    pixel = base[face] + row[slot, face].long() * w + col[slot, face].long()
    best.scatter_reduce_(0, pixel, key, reduce="amin", include_self=True)


@dataclass
class PixelFaces:
    """The visible face at each covered pixel, compact over the ``M`` covered pixels.

    Attributes:
        idx: ``(M,)`` flat pixel index ``n * H * W + y * W + x``, ascending.
        mesh, face: ``(M,)`` mesh index ``n`` and face index ``f`` (row of ``faces``).
        vid: ``(M, 3)`` vertex ids of the face, offset into the flattened ``(N * Nv)`` vertices.
        pu, pv: ``(M,)`` pixel centre, px.
        u, v, z: 3-tuples of ``(M,)`` projected corner coordinates (px, px, mm), differentiable
            with respect to the projected vertices they were gathered from.
        shape: ``(N, H, W)``.
    """

    idx: torch.Tensor
    mesh: torch.Tensor
    face: torch.Tensor
    vid: torch.Tensor
    pu: torch.Tensor
    pv: torch.Tensor
    u: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    v: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    z: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    shape: tuple[int, int, int]

    def barycentric(self) -> torch.Tensor:
        """``(M, 3)`` PyTorch3D barycentrics of the pixel centres (``edge / (area + eps)``)."""
        s = float(min(self.shape[1:]))
        return barycentric(self.pu, self.pv, self.u, self.v, KEPS * s * s / 4.0)

    def scatter(self, vals: torch.Tensor, fill: float) -> torch.Tensor:
        """Dense ``(N, H, W, *C)`` tensor with ``vals`` ``(M, *C)`` at the covered pixels."""
        n, h, w = self.shape
        full = vals.new_full((n * h * w, *vals.shape[1:]), fill)
        return full.index_put((self.idx,), vals).reshape(n, h, w, *vals.shape[1:])


def pixel_faces(pix_to_face: torch.Tensor, proj: torch.Tensor, faces: torch.Tensor) -> PixelFaces:
    """Gather the visible faces' projected corners at every covered pixel.

    Args:
        pix_to_face: ``(N, H, W, 1)`` packed face ids (``n * F + f``), ``-1`` where empty.
        proj: ``(N, Nv, 3)`` projected vertices (u px, v px, depth mm).
        faces: ``(F, 3)`` long.
    """
    n, h, w, _ = pix_to_face.shape
    nv = proj.shape[1]
    nf = faces.shape[0]
    flat = pix_to_face.reshape(-1)
    idx = (flat >= 0).nonzero().squeeze(1)
    g = flat.index_select(0, idx)
    mesh = g // nf
    face = g - mesh * nf
    vid = faces.index_select(0, face) + (mesh * nv)[:, None]  # (M, 3)
    rows = proj.reshape(-1, 3)
    corner = [rows.index_select(0, vid[:, k]) for k in range(3)]  # 3 x (M, 3)
    pix = idx - mesh * (h * w)
    row = pix // w
    pu = (pix - row * w).to(proj.dtype) + 0.5
    pv = row.to(proj.dtype) + 0.5
    planar = torch.stack(corner).permute(2, 0, 1).contiguous()  # (3 coords, 3 corners, M)
    u, v, z = (tuple(c.unbind(0)) for c in planar.unbind(0))  # unbind: one backward node
    return PixelFaces(idx, mesh, face, vid, pu, pv, u, v, z, (n, h, w))


def fragments_from_pix_to_face(pix_to_face: torch.Tensor, proj: torch.Tensor,
                               faces: torch.Tensor, with_dists: bool = False) -> Fragments:
    """Fragments for given face ids, recomputing barycentrics and depths (and dists) in torch.

    Args:
        pix_to_face: ``(N, H, W, 1)`` packed face ids (``n * F + f``), ``-1`` where empty.
        proj: ``(N, Nv, 3)`` projected vertices (u px, v px, depth mm); gradients flow to it.
        faces: ``(F, 3)`` long.
        with_dists: also compute PyTorch3D's ``dists``; otherwise ``dists`` is None.
    Returns:
        `Fragments` as in the module docstring (PyTorch3D's formulas, in pixel units).
    """
    pf = pixel_faces(pix_to_face, proj, faces)
    bary = pf.barycentric()
    zbuf = bary[:, 0] * pf.z[0] + bary[:, 1] * pf.z[1] + bary[:, 2] * pf.z[2]
    dists = None
    if with_dists:
        s = float(min(pf.shape[1:]))
        d2 = point_triangle_dist2(pf.pu, pf.pv, pf.u, pf.v) * (4.0 / (s * s))
        dists = pf.scatter(-d2[:, None], -1.0)
    return Fragments(pix_to_face=pix_to_face, zbuf=pf.scatter(zbuf[:, None], -1.0),
                     bary_coords=pf.scatter(bary[:, None], -1.0), dists=dists)


def barycentric(pu: torch.Tensor, pv: torch.Tensor, u, v, eps: float) -> torch.Tensor:
    """PyTorch3D's barycentrics ``edge_k / (area + eps)`` of points, in pixel units.

    Args:
        pu, pv: ``(M,)`` points. u, v: the triangles' corner coordinates, each a 3-tuple of
            ``(M,)`` tensors (or an ``(M, 3)`` tensor).
        eps: added to the signed area before dividing (PyTorch3D's ``1e-8`` NDC, in px²).
    Returns:
        ``(M, 3)`` barycentrics in the triangle's vertex order.
    """
    u0, u1, u2 = u.unbind(-1) if isinstance(u, torch.Tensor) else u
    v0, v1, v2 = v.unbind(-1) if isinstance(v, torch.Tensor) else v
    den = (u2 - u0) * (v1 - v0) - (v2 - v0) * (u1 - u0) + eps
    e0 = (pu - u1) * (v2 - v1) - (pv - v1) * (u2 - u1)
    e1 = (pu - u2) * (v0 - v2) - (pv - v2) * (u0 - u2)
    e2 = (pu - u0) * (v1 - v0) - (pv - v0) * (u1 - u0)
    return torch.stack([e0, e1, e2], -1) / den[:, None]


def point_triangle_dist2(pu: torch.Tensor, pv: torch.Tensor, u, v) -> torch.Tensor:
    """Squared distance (px²) from points ``(M,)`` to the boundary of triangles (corners as
    in `barycentric`)."""
    u0, u1, u2 = u.unbind(-1) if isinstance(u, torch.Tensor) else u
    v0, v1, v2 = v.unbind(-1) if isinstance(v, torch.Tensor) else v
    d = torch.stack([_seg_dist2(pu, pv, a, b, c, e) for a, b, c, e in
                     ((u0, v0, u1, v1), (u1, v1, u2, v2), (u2, v2, u0, v0))], -1)
    return d.min(-1).values


def _seg_dist2(pu, pv, au, av, bu, bv):
    """Squared distance from points to segments a-b (all ``(M,)``)."""
    du, dv = bu - au, bv - av
    l2 = du * du + dv * dv
    t = (((pu - au) * du + (pv - av) * dv) / l2.clamp_min(1e-20)).clamp(0.0, 1.0)
    qu, qv = au + t * du - pu, av + t * dv - pv
    return qu * qu + qv * qv
