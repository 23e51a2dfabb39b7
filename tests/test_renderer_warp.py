"""Cross-view warps, co-visibility and vertex visibility: known answers and gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from renderer.camera import make_pose, project, project_with_depth, view_directions
from renderer.errors import RendererError
from mvf.face.model import DEFAULT_ASSET, FaceModel
from renderer import (
    ALL_PAIRS, covisibility, cross_view_warp, depth_test, rasterize, render, surface_planes,
    vertex_visibility,
)
from renderer.textures import smooth_random_colours

needs_model = pytest.mark.skipif(not DEFAULT_ASSET.is_file(), reason="face model asset not built")


def triplet_poses(size: int, dtype=torch.float32) -> torch.Tensor:
    f = 0.62 * size / 224.0
    ty = size / 2 - 20.0 * f
    return torch.stack([make_pose(f, 0, 0, 0, size / 2, ty), make_pose(f, 8, -38, 3, size / 2 + 1.3, ty),
                        make_pose(f, 8, 38, -3, size / 2 - 0.7, ty + 0.4)]).to(dtype)


@needs_model
def test_known_answer_warp_matches_true_renders():
    face = FaceModel.load()
    size = 96
    poses = triplet_poses(size)
    verts = face.mean
    colours = smooth_random_colours(verts, torch.Generator().manual_seed(5))
    rgba = render(verts[None].expand(3, -1, -1), face.faces, colours[None].expand(3, -1, -1), poses, size)
    images = rgba[..., :3].permute(0, 3, 1, 2)[None]  # (1, 3, 3, H, W)
    warped, valid = cross_view_warp(images, verts[None], face.faces, poses[None])
    assert warped.shape == (1, 6, 3, size, size) and valid.shape == (1, 6, 1, size, size)
    covered = rgba[..., 3] > 0  # (3, H, W)
    # pixels of b at least 2 px away from its silhouette
    interior = -F.max_pool2d(-covered[:, None].float(), 5, stride=1, padding=2)[:, 0] > 0
    for p, (a, b) in enumerate(ALL_PAIRS):
        m = (valid[0, p, 0] > 0) & interior[b]
        assert m.sum() > 0.15 * covered[b].sum(), (a, b)  # left<->right share the least
        assert not (valid[0, p, 0] > 0)[~covered[b]].any()
        mae = (warped[0, p] - images[0, b]).abs().mean(0)[m].mean()
        assert mae < 2 / 255, (a, b, mae.item() * 255)
        assert (warped[0, p][:, valid[0, p, 0] == 0] == 0).all()


@needs_model
def test_per_view_meshes_warp_a_pinhole_cameras_renders():
    """One mesh per view: identical copies give the shared mesh's warp exactly; meshes pre-warped
    for a 300 mm pinhole camera (`Pinhole.view_verts`) warp its true renders onto each other."""
    from pytorch3d.renderer import AmbientLights

    from renderer.camera import Pinhole, view_meshes

    face = FaceModel.load()
    size = 96
    poses = triplet_poses(size)
    verts = face.mean
    colours = smooth_random_colours(verts, torch.Generator().manual_seed(5))
    images = torch.rand(1, 3, 3, size, size, generator=torch.Generator().manual_seed(1))
    shared = cross_view_warp(images, verts[None], face.faces, poses[None])
    copies = cross_view_warp(images, view_meshes(verts, poses, None)[None], face.faces, poses[None])
    assert torch.allclose(shared[0], copies[0], atol=1e-5) and torch.equal(shared[1], copies[1])
    camera = Pinhole(300.0, (0.0, 0.0, 40.0))
    meshes = view_meshes(verts, poses, camera)  # (3, N, 3)
    assert (project(meshes, poses) - project(verts[None].expand(3, -1, -1), poses)).norm(dim=-1).max() > 1.0
    # ambient light: Phong shading would follow each view's pre-warped normals
    rgba = render(meshes, face.faces, colours[None].expand(3, -1, -1), poses, size, lights=AmbientLights())
    pin_images = rgba[..., :3].permute(0, 3, 1, 2)[None]
    covered = rgba[..., 3] > 0
    interior = -F.max_pool2d(-covered[:, None].float(), 5, stride=1, padding=2)[:, 0] > 0
    maes = {}
    for name, geometry in (("per view", meshes[None]), ("weak", verts[None])):
        warped, valid = cross_view_warp(pin_images, geometry, face.faces, poses[None])
        maes[name] = []
        for p, (a, b) in enumerate(ALL_PAIRS):
            m = (valid[0, p, 0] > 0) & interior[b]
            assert m.sum() > (0.1 if 0 in (a, b) else 0.02) * covered[b].sum(), (name, a, b)
            maes[name].append(float((warped[0, p] - pin_images[0, b]).abs().mean(0)[m].mean()))
    assert max(maes["per view"]) < 2 / 255, maes
    assert max(maes["weak"]) > 2 * max(maes["per view"]), maes  # the camera's distance matters here


def test_identity_pair_reproduces_the_image():
    verts, faces = sheet(12)
    pose = make_pose(0.3, 5, 10, 0, 24, 24)
    poses = torch.stack([pose, pose])[None]
    images = torch.rand(1, 2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    warped, valid = cross_view_warp(images, verts[None], faces, poses, pairs=[(0, 1), (1, 0)])
    covered = rasterize(verts[None], faces, pose[None], 48).pix_to_face[0, ..., 0] >= 0
    m = valid[0, 0, 0] > 0
    assert m.sum() >= 0.85 * covered.sum()  # all but the 1-pixel rim of the silhouette
    # the surface point of a pixel centre projects back onto it (to float rounding)
    assert (warped[0, 0][:, m] - images[0, 0][:, m]).abs().max() < 1e-3


def sheet(n: int, half: float = 60.0, z: float = 0.0):
    """A flat n x n grid at depth z facing +z."""
    ys, xs = torch.meshgrid(torch.linspace(-half, half, n), torch.linspace(-half, half, n), indexing="ij")
    verts = torch.stack([xs, ys, torch.full_like(xs, z)], -1).reshape(-1, 3)
    i = torch.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).reshape(-1)
    faces = torch.cat([torch.stack([a, a + 1, a + n], 1), torch.stack([a + 1, a + n + 1, a + n], 1)])
    return verts, faces


def occluder_scene():
    """A 60 mm wall behind a 24 mm square card 30 mm in front of it."""
    wall_v, wall_f = sheet(31, half=60.0)
    card_v, card_f = sheet(9, half=12.0, z=30.0)
    verts = torch.cat([wall_v, card_v])
    faces = torch.cat([wall_f, card_f + wall_v.shape[0]])
    return verts, faces, wall_v.shape[0]


def hidden_by_card(points: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Analytic: wall points (z = 0) whose ray towards the camera of ``pose`` hits the card."""
    d = view_directions(pose)
    hit = points + (30.0 / d[2]) * d
    return (hit[:, 0].abs() < 12.0) & (hit[:, 1].abs() < 12.0)


def test_covisibility_known_answer():
    verts, faces, _ = occluder_scene()
    size = 64
    pose_b = make_pose(0.4, 0, 0, 0, 32.2, 31.7)
    pose_a = make_pose(0.4, 10, 35, 0, 31.6, 32.3)
    poses = torch.stack([pose_a, pose_b])[None]
    covis = covisibility(verts[None], faces, poses, (size, size), pairs=[(0, 1)])[0, 0]
    frag = rasterize(verts[None], faces, pose_b[None], size)
    from renderer import surface_points

    pts = surface_points(frag, verts[None], faces)[0]  # (H, W, 3) what b sees
    covered = frag.pix_to_face[0, ..., 0] >= 0
    on_card = pts[..., 2] > 15.0
    expected = covered & (on_card | ~hidden_by_card(pts.reshape(-1, 3), pose_a).reshape(size, size))
    # ignore pixels within 2 px of a boundary of the expected mask (sampling footprint, rims)
    exp_f = expected[None, None].float()
    near = (F.max_pool2d(exp_f, 5, 1, 2) != -F.max_pool2d(-exp_f, 5, 1, 2))[0, 0]
    assert (~near).sum() > 2000
    assert torch.equal(covis[~near], expected[~near])
    assert (~expected & covered).sum() > 50  # the card really hides part of the wall


def test_vertex_visibility_known_answer_and_tolerance():
    verts, faces, n_wall = occluder_scene()
    pose = make_pose(0.4, -10, -40, 5, 32.4, 31.9)
    frag = rasterize(verts[None], faces, pose[None], 64)
    vis = vertex_visibility(verts[None], faces, pose[None], frag)[0]
    assert vis[n_wall:].all()  # the card is in front of everything
    hidden = hidden_by_card(verts[:n_wall], pose)
    # skip wall vertices within 1.5 px (3.75 mm at f = 0.4) of the card's shadow edge
    d = view_directions(pose)
    hit = verts[:n_wall] + (30.0 / d[2]) * d
    clear = ((hit[:, :2].abs() - 12.0).abs() > 3.75).all(1)
    in_view = project_with_depth(verts[:n_wall], pose)[:, :2]
    in_view = ((in_view > 1.0) & (in_view < 63.0)).all(1)
    sel = clear & in_view
    assert sel.sum() > 300 and hidden[sel].sum() > 10
    assert torch.equal(vis[:n_wall][sel], ~hidden[sel])
    # The stated tolerance: points up to tol_mm behind the visible surface pass, beyond fail.
    planes = surface_planes(frag, project_with_depth(verts[None], pose[None]), faces)
    uvd = project_with_depth(torch.tensor([[[-50.0, 40.0, 0.0]]]), pose[None])  # on the wall
    for extra, ok in ((1.4, True), (1.6, False), (-5.0, True)):
        shifted = uvd + torch.tensor([0.0, 0.0, extra])
        assert depth_test(planes, torch.tensor([0]), shifted, tol_mm=1.5)[0, 0].item() is ok


@needs_model
def test_warp_loss_gradient_matches_finite_differences():
    face = FaceModel.load()
    size = 40
    poses = triplet_poses(size, torch.float64)[None]
    verts = face.mean.double()[None]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    # smooth images: bilinear sampling of them is nearly linear within a pixel
    images = torch.stack([torch.stack([0.5 + 0.4 * torch.sin(xs / (5 + v + c) + ys / (7 + 2 * c) + v)
                                       for c in range(3)]) for v in range(3)])[None]
    with torch.no_grad():
        frags = rasterize(verts.expand(3, -1, -1), face.faces, poses[0], size)
    targets = images[:, [b for _, b in ALL_PAIRS]]

    def loss(v, p):
        warped, valid = cross_view_warp(images, v, face.faces, p, fragments=frags)
        return (((warped - targets) ** 2) * valid).sum() / size**2

    v = verts.clone().requires_grad_()
    p = poses.clone().requires_grad_()
    loss(v, p).backward()
    eps = 1e-6
    for view in range(3):
        for k in range(6):
            dp = torch.zeros_like(poses)
            dp[0, view, k] = eps
            fd = ((loss(verts, poses + dp) - loss(verts, poses - dp)) / (2 * eps)).item()
            assert math.isclose(p.grad[0, view, k].item(), fd, rel_tol=2e-3, abs_tol=1e-5), (view, k)
    assert p.grad.abs().sum() > 0
    nose = int(face.landmarks[30])
    for idx in [(0, nose, 0), (0, nose, 2)]:
        dv = torch.zeros_like(verts)
        dv[idx] = eps
        fd = ((loss(verts + dv, poses) - loss(verts - dv, poses)) / (2 * eps)).item()
        assert math.isclose(v.grad[idx].item(), fd, rel_tol=2e-3, abs_tol=1e-5), idx


def test_batching_pair_subsets_fragments_and_errors():
    verts, faces = sheet(10)
    g = torch.Generator().manual_seed(1)
    verts2 = torch.stack([verts, verts * 1.1 + 2.0])
    poses = torch.stack([torch.stack([make_pose(0.3, 0, 0, 0, 24, 24), make_pose(0.3, 5, 30, 0, 25, 23),
                                      make_pose(0.3, -5, -30, 0, 23, 24)]),
                         torch.stack([make_pose(0.28, 0, 10, 0, 24, 24), make_pose(0.3, 0, 40, 0, 24, 24),
                                      make_pose(0.3, 0, -35, 5, 24, 24)])])
    images = torch.rand(2, 3, 3, 48, 48, generator=g)
    warped, valid = cross_view_warp(images, verts2, faces, poses)
    for s in range(2):
        w1, v1 = cross_view_warp(images[s:s + 1], verts2[s:s + 1], faces, poses[s:s + 1])
        assert torch.allclose(w1[0], warped[s], atol=1e-6) and torch.equal(v1[0], valid[s])
    sub_w, sub_v = cross_view_warp(images, verts2, faces, poses, pairs=[(2, 0)])
    assert torch.allclose(sub_w[:, 0], warped[:, ALL_PAIRS.index((2, 0))], atol=1e-6)
    frags = rasterize(verts2[:, None].expand(2, 3, -1, -1), faces, poses, 48)
    pre_w, pre_v = cross_view_warp(images, verts2, faces, poses, fragments=frags)
    assert torch.allclose(pre_w, warped, atol=1e-6) and torch.equal(pre_v, valid)
    with pytest.raises(RendererError):
        cross_view_warp(images, verts2, faces, poses, pairs=[(1, 1)])
    with pytest.raises(RendererError):
        cross_view_warp(images, verts2, faces, poses, pairs=[(0, 3)])
    with pytest.raises(RendererError):
        cross_view_warp(images[:, :2], verts2, faces, poses)
