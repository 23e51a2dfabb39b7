"""The fast rasterizer against PyTorch3D's MeshRasterizer, analytic coverage, layouts, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from renderer.camera import make_pose, project, project_with_depth
from renderer.errors import RendererError
from mvf.face.model import DEFAULT_ASSET
from renderer import RendererConfig, rasterize, resolve_backend, surface_points
from renderer.raster import fast_pix_to_face, fragments_from_pix_to_face

needs_model = pytest.mark.skipif(not DEFAULT_ASSET.is_file(), reason="face model asset not built")


def face_pose(size: tuple[int, int], pitch=0.0, yaw=0.0, roll=0.0, scale=0.62):
    """Pose framing the ~290 mm tall face model in an (H, W) image."""
    h, w = size
    f = scale * min(h, w) / 224.0
    return make_pose(f, pitch, yaw, roll, w / 2, h / 2 - 20.0 * f)


def compare(fast, ref):
    """(pix_to_face agreement, max |dzbuf| / zbuf, fraction of bary diffs > 1e-4, max bary diff)."""
    a, b = fast.pix_to_face[..., 0], ref.pix_to_face[..., 0]
    agree = (a == b).float().mean().item()
    both = (a == b) & (a >= 0)
    assert both.any()
    dz = (fast.zbuf[..., 0] - ref.zbuf[..., 0])[both].abs()
    rel_z = (dz / ref.zbuf[..., 0][both].abs()).max().item()
    db = (fast.bary_coords[..., 0, :] - ref.bary_coords[..., 0, :])[both].abs().max(-1).values
    return agree, rel_z, (db > 1e-4).float().mean().item(), db.max().item()


def assert_matches_reference(fast, ref):
    agree, rel_z, frac_b, max_b = compare(fast, ref)
    assert agree >= 0.995
    # PyTorch3D accumulates depths near DEPTH_OFFSET = 1000 mm in float32 (resolution 6e-5 mm),
    # so its zbuf carries ~1e-3 mm of rounding: compare relative to the depth.
    assert rel_z < 1e-5
    # Barycentrics agree to 1e-4 except on a few sliver triangles, where float32 rounding of
    # PyTorch3D's NDC vertices is amplified by the triangle's conditioning.
    assert frac_b < 1e-3
    assert max_b < 2e-3
    empty = fast.pix_to_face[..., 0] < 0
    assert (fast.zbuf[..., 0][empty] == -1).all() and (fast.bary_coords[..., 0, :][empty] == -1).all()


@needs_model
@pytest.mark.parametrize("size,angles", [
    ((64, 64), (0.0, 0.0, 0.0)),
    ((72, 96), (12.0, 40.0, -8.0)),
    ((96, 80), (-10.0, -65.0, 15.0)),
])
def test_fast_matches_pytorch3d_on_face(face, size, angles):
    pose = face_pose(size, *angles)[None]
    fast = rasterize(face.mean[None], face.faces, pose, size, backend="fast", with_dists=True)
    ref = rasterize(face.mean[None], face.faces, pose, size, backend="pytorch3d")
    assert_matches_reference(fast, ref)
    both = (fast.pix_to_face == ref.pix_to_face) & (fast.pix_to_face >= 0)
    assert torch.allclose(fast.dists[both], ref.dists[both], atol=1e-6)
    assert (fast.pix_to_face >= 0).float().mean() > 0.2  # the face fills the image


def random_soup(n_faces: int, g: torch.Generator, spread=80.0, size=25.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersecting triangles of mixed sizes, each with its own vertices (no duplicates)."""
    centres = (torch.rand(n_faces, 1, 3, generator=g) - 0.5) * spread
    scale = size * torch.rand(n_faces, 1, 1, generator=g) ** 2 + 0.5
    verts = (centres + scale * torch.randn(n_faces, 3, 3, generator=g)).reshape(-1, 3)
    return verts, torch.arange(3 * n_faces).reshape(n_faces, 3)


def wavy_sheet(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A folded grid surface (shares edges, overlaps itself in depth)."""
    ys, xs = torch.meshgrid(torch.linspace(-50, 50, n), torch.linspace(-50, 50, n), indexing="ij")
    zs = 25 * torch.sin(xs / 12 + torch.rand(1, generator=g) * 6) * torch.cos(ys / 17)
    verts = torch.stack([xs + 15 * torch.sin(ys / 10), ys, zs], -1).reshape(-1, 3)
    i = torch.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).reshape(-1)
    faces = torch.cat([torch.stack([a, a + 1, a + n], 1), torch.stack([a + 1, a + n + 1, a + n], 1)])
    return verts, faces


@pytest.mark.parametrize("kind", ["soup", "sheet"])
def test_fast_matches_pytorch3d_on_random_meshes(kind):
    g = torch.Generator().manual_seed(3 if kind == "soup" else 4)
    verts, faces = random_soup(300, g) if kind == "soup" else wavy_sheet(24, g)
    size = (60, 76)
    poses = torch.stack([make_pose(0.55, 20, -30, 10, 38, 30), make_pose(0.7, -35, 70, -20, 33, 27),
                         make_pose(0.4, 80, 10, 45, 40, 31)])
    verts = verts[None].expand(3, -1, -1)
    fast = rasterize(verts, faces, poses, size, backend="fast")
    ref = rasterize(verts, faces, poses, size, backend="pytorch3d")
    assert_matches_reference(fast, ref)


def test_coverage_and_depth_of_a_known_triangle():
    """Both backends cover exactly the pixel centres inside the projected triangle, with the
    plane's depth there: checks that rasterization lands where renderer.camera.project puts vertices."""
    verts = torch.tensor([[[-40.0, -30.0, 5.0], [45.0, -20.0, -10.0], [-5.0, 50.0, 20.0]]])
    faces = torch.tensor([[0, 1, 2]])
    pose = make_pose(0.4, 15, -25, 10, 31.3, 27.8)[None]
    size = (56, 64)
    uvd = project_with_depth(verts.double(), pose.double())[0]  # (3, 3) float64
    ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float64) + 0.5,
                            torch.arange(size[1], dtype=torch.float64) + 0.5, indexing="ij")
    # Analytic barycentrics of every pixel centre in float64.
    (u0, v0, z0), (u1, v1, z1), (u2, v2, z2) = uvd.tolist()
    area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
    w1 = ((xs - u0) * (v2 - v0) - (u2 - u0) * (ys - v0)) / area
    w2 = ((u1 - u0) * (ys - v0) - (xs - u0) * (v1 - v0)) / area
    w0 = 1 - w1 - w2
    margin = torch.minimum(torch.minimum(w0, w1), w2)
    inside = margin > 0
    sure = margin.abs() > 1e-4  # ignore centres within rounding of an edge
    depth = w0 * z0 + w1 * z1 + w2 * z2
    for backend in ("fast", "pytorch3d"):
        frag = rasterize(verts, faces, pose, size, backend=backend)
        covered = frag.pix_to_face[0, ..., 0] >= 0
        assert inside.sum() > 200
        assert torch.equal(covered[sure], inside[sure]), backend
        assert torch.allclose(frag.zbuf[0, ..., 0][inside & sure].double(), depth[inside & sure], atol=2e-3)
        bary = frag.bary_coords[0, :, :, 0][inside & sure].double()
        ref = torch.stack([w0, w1, w2], -1)[inside & sure]
        assert torch.allclose(bary, ref, atol=1e-4), backend
    # The vertices themselves land at project()'s pixels: the surface point at the pixel
    # containing each projected vertex lies within a pixel of it.
    frag = rasterize(verts, faces, pose, size, backend="pytorch3d")
    pts = surface_points(frag, verts, faces)[0]
    uv = project(verts, pose)[0]
    centroid = verts[0].mean(0)
    for k in range(3):  # step from the vertex a little towards the centroid to be inside
        target = verts[0, k] + 0.1 * (centroid - verts[0, k])
        tu, tv = project(target[None], pose[0]).reshape(2).tolist()
        got = pts[int(tv), int(tu)]
        assert (got - target).norm() < 1.5 / 0.4  # one pixel diagonal in mm at f = 0.4
    assert uv.shape == (3, 2)


def test_empty_and_offscreen_meshes():
    g = torch.Generator().manual_seed(0)
    verts, faces = random_soup(40, g)
    size = (32, 40)
    on = make_pose(0.3, 0, 20, 0, 20, 16)
    off = make_pose(0.3, 0, 20, 0, -500, 16)
    behind = make_pose(0.3, 0, 0, 0, 20, 16)
    verts_far = verts.clone()
    verts_far[:, 2] += 5000.0  # every vertex in front of the camera plane: depth < 0
    batch = torch.stack([verts, verts, verts_far])
    poses = torch.stack([on, off, behind])
    for backend in ("fast", "pytorch3d"):
        frag = rasterize(batch, faces, poses, size, backend=backend)
        assert (frag.pix_to_face[0] >= 0).any()
        assert (frag.pix_to_face[1:] == -1).all()
        assert (frag.zbuf[1:] == -1).all() and (frag.bary_coords[1:] == -1).all()
    alone = rasterize(verts[None], faces, on[None], size, backend="fast")
    mixed = rasterize(batch, faces, poses, size, backend="fast")
    assert torch.equal(alone.pix_to_face[0], mixed.pix_to_face[0])  # packed ids of mesh 0
    none = rasterize(verts[None], faces[:0], on[None], size)
    assert none.pix_to_face.shape == (1, 32, 40, 1) and (none.pix_to_face == -1).all()


def test_batch_layout_packed_ids_and_chunking():
    g = torch.Generator().manual_seed(1)
    verts, faces = random_soup(120, g)
    n_faces = faces.shape[0]
    poses = torch.stack([make_pose(0.5, 0, a, 0, 24, 20) for a in (-30, 0, 30, 60)]).reshape(2, 2, 6)
    verts4 = (verts[None] + torch.randn(4, 1, 3, generator=g)).reshape(2, 2, -1, 3)
    frag = rasterize(verts4, faces, poses, (40, 48), backend="fast")
    assert frag.pix_to_face.shape == (4, 40, 48, 1)
    for n in range(4):
        single = rasterize(verts4.reshape(4, -1, 3)[n:n + 1], faces, poses.reshape(4, 6)[n:n + 1], (40, 48))
        ids = frag.pix_to_face[n]
        expected = torch.where(single.pix_to_face[0] >= 0, single.pix_to_face[0] + n * n_faces, -1)
        assert torch.equal(ids, expected)
    proj = project_with_depth(verts4.reshape(4, -1, 3), poses.reshape(4, 6))
    small_chunks = fast_pix_to_face(proj, faces, (40, 48), max_candidates=16)
    assert torch.equal(small_chunks, frag.pix_to_face)


def test_backend_selection_and_errors():
    assert resolve_backend("auto", "cpu") == "fast"
    assert resolve_backend("auto", "cuda") == "pytorch3d"
    assert resolve_backend("pytorch3d", "cpu") == "pytorch3d"
    assert RendererConfig().backend == "auto"
    with pytest.raises(RendererError, match="unknown"):
        RendererConfig(backend="opengl")
    with pytest.raises(RendererError):
        RendererConfig(vis_tol_mm=-1.0)
    verts = torch.zeros(1, 3, 3)
    with pytest.raises(RendererError, match="unknown"):
        rasterize(verts, torch.tensor([[0, 1, 2]]), torch.zeros(1, 6), 8, backend="bogus")
    with pytest.raises(RendererError, match="vertex ids"):
        rasterize(verts, torch.tensor([[0, 1, 3]]), torch.zeros(1, 6), 8)
    with pytest.raises(RendererError, match="number of views"):
        rasterize(torch.zeros(2, 3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(3, 6), 8)


def test_barycentrics_and_surface_points_are_differentiable():
    """Finite differences of surface points / zbuf with fixed pix_to_face, w.r.t. verts and pose."""
    g = torch.Generator().manual_seed(2)
    verts, faces = wavy_sheet(8, g)
    verts = verts.double()[None]
    pose = make_pose(0.25, 10, 25, 5, 16, 16).double()[None]
    with torch.no_grad():
        p2f = rasterize(verts, faces, pose, (32, 32), backend="fast").pix_to_face
    weights = torch.randn(1, 32, 32, 3, generator=g, dtype=torch.float64)

    def loss(v, p):
        frag = fragments_from_pix_to_face(p2f, project_with_depth(v, p), faces)
        pts = surface_points(frag, v, faces)
        return (pts * weights).sum() + 0.01 * frag.zbuf.clamp_min(0).sum()

    v = verts.clone().requires_grad_()
    p = pose.clone().requires_grad_()
    loss(v, p).backward()
    eps = 1e-6
    for k in range(6):
        dp = torch.zeros_like(pose)
        dp[0, k] = eps
        fd = (loss(verts, pose + dp) - loss(verts, pose - dp)) / (2 * eps)
        assert math.isclose(p.grad[0, k].item(), fd.item(), rel_tol=1e-5, abs_tol=1e-6)
    for idx in [(0, 10, 0), (0, 27, 2), (0, 40, 1)]:
        dv = torch.zeros_like(verts)
        dv[idx] = eps
        fd = (loss(verts + dv, pose) - loss(verts - dv, pose)) / (2 * eps)
        assert math.isclose(v.grad[idx].item(), fd.item(), rel_tol=1e-5, abs_tol=1e-6)
