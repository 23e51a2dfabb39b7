"""The view-dependent jawline: candidate lines (mvf.face.contour) and the silhouette search of the
landmark projector (mvf.face.landmarks), checked by projection only."""
from __future__ import annotations

import math

import pytest
import torch

from renderer.camera import Pinhole, make_pose, project, view_directions
from renderer.rotations import euler_to_matrix
from mvf.face.contour import build_contour_lines
from mvf.face.landmarks import LandmarkProjector
from mvf.face.mesh import vertex_normals
from mvf.face.model import FaceModel

RIGHT_SIDE = list(range(0, 8))  # subject's right jaw (x < 0)
LEFT_SIDE = list(range(9, 17))


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def lines(model):
    return build_contour_lines(model.mean, model.faces, model.landmarks)


def projector_with(model, lines=None) -> LandmarkProjector:
    """The iBUG-68 projector, its jawline on ``lines`` (default the asset's)."""
    lset = model.landmark_set()
    if lines is not None:
        lset.contour_lines = torch.full((68, lines.shape[1]), -1, dtype=torch.long)
        lset.contour_lines[:17] = lines
    return LandmarkProjector(model, lset)


def jaw_vertex_ids(verts, poses, model, lines=None):
    """``(N, 17)`` jawline vertex ids and on-silhouette flags of meshes ``(N, Nv, 3)``, poses ``(N, 6)``."""
    choice = projector_with(model, lines).select(verts, poses[:, None])
    return projector_with(model, lines).vertex_ids[choice.tri[:, 0, :17, 0]], choice.on_silhouette[:, 0, :17]


def landmarks_per_mesh(verts, poses, model):
    """``(N, 68, 2)`` px and ``(N, 68)`` vertex ids, one pose ``(N, 6)`` per mesh ``(N, Nv, 3)``."""
    out = projector_with(model).project(verts, poses[:, None])
    return out.uv[:, 0], out.vertex_ids[:, 0, :, 0]


@pytest.fixture(scope="module")
def faces_shapes(model):
    g = torch.Generator().manual_seed(3)
    ids = torch.randn(4, model.n_id, generator=g)
    exp = torch.zeros(4, model.n_exp)
    exp[1, model.exp_names.index("jawOpen")] = 0.6
    exp[2, model.exp_names.index("mouthSmile_L")] = 0.8
    return model.decode(ids, exp)


def test_vertex_normals_match_pytorch3d(model, faces_shapes):
    from pytorch3d.structures import Meshes

    ours = vertex_normals(faces_shapes, model.faces)
    ref = Meshes(verts=list(faces_shapes), faces=[model.faces] * len(faces_shapes)).verts_normals_padded()
    assert torch.allclose(ours, ref, atol=1e-5)
    # outward: the nose tip's normal points out of the face (+z)
    tip = model.landmarks[30]
    assert (ours[:, tip, 2] > 0.8).all()


_EDGES: dict = {}


def _edge_table(faces):
    """Unique undirected edges and, per face corner edge, its index (cached per topology)."""
    key = (faces.shape[0], int(faces.sum()))
    if key not in _EDGES:
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        uniq, inv = torch.unique(torch.sort(edges, 1).values, dim=0, return_inverse=True)
        n_all = torch.zeros(len(uniq)).index_add_(0, inv, torch.ones(len(inv)))
        _EDGES[key] = (uniq, inv, n_all)
    return _EDGES[key]


def _rim_distance(verts, faces, pose, points):
    """Distance (px) from each point to the nearest projected rim edge (front/back-facing crease)."""
    v0, v1, v2 = (verts[faces[:, i]] for i in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
    front = (fn @ view_directions(pose)) > 0
    uniq, inv, n_all = _edge_table(faces)
    n_front = torch.zeros(len(uniq)).index_add_(0, inv, torch.cat([front, front, front]).float())
    rim = uniq[(n_all == 2) & (n_front == 1)]
    uv = project(verts, pose)
    a, b = uv[rim[:, 0]], uv[rim[:, 1]]
    ab = b - a
    t = (((points[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
    closest = a[None] + t[..., None] * ab[None]
    return (points[:, None] - closest).norm(dim=-1).min(1).values


@pytest.mark.parametrize("yaw", [-55.0, -30.0, 40.0, 60.0])
def test_far_side_moves_onto_the_rim(model, faces_shapes, lines, yaw):
    f = 1.0  # px per mm, so the tolerance reads in mm too
    for k, verts in enumerate(faces_shapes):
        pose = make_pose(f, pitch_deg=[-10, 0, 8, 12][k], yaw_deg=yaw, roll_deg=[5, 0, -7, 3][k],
                         tx=120, ty=110)
        ids, moved = jaw_vertex_ids(verts[None], pose[None], model, lines=lines)
        far = RIGHT_SIDE if yaw < 0 else LEFT_SIDE
        near = LEFT_SIDE if yaw < 0 else RIGHT_SIDE
        # left views (negative yaw) turn the subject's right jaw away: it slides to the outline
        assert moved[0, far].sum() >= 3, (yaw, k, moved)
        assert not moved[0, near].any() and not moved[0, 8]
        assert (ids[0, ~moved[0]] == model.landmarks[:17][~moved[0]]).all()
        pts = project(verts[ids[0, moved[0]]], pose)
        dist = _rim_distance(verts, model.faces, pose, pts)
        assert dist.max() < 1.5, (yaw, k, dist)


@pytest.mark.parametrize("use_asset_lines", [True, False])
def test_frontal_views_keep_the_lower_jaw(model, faces_shapes, lines, use_asset_lines):
    """Near-frontal: the lower jaw faces the camera and stays; upper points may reach the outline
    where a cheek bulges past them, and then sit on the rim."""
    poses = torch.stack([make_pose(1.0, p, y, r, 100, 100) for p, y, r in ((0, 0, 0), (5, 4, -6), (-8, -3, 9))])
    use = None if use_asset_lines else lines
    for verts in faces_shapes:
        ids, moved = jaw_vertex_ids(verts[None].expand(3, -1, -1), poses, model, lines=use)
        assert not moved[:, 4:13].any()
        assert (ids[~moved] == model.landmarks[:17].expand(3, -1)[~moved]).all()
        if use is not None:
            for i in range(3):
                if moved[i].any():
                    pts = project(verts[ids[i, moved[i]]], poses[i])
                    assert _rim_distance(verts, model.faces, poses[i], pts).max() < 1.5


def test_dense_lines_are_ordered_lines_through_each_landmark(model, lines):
    mean = model.mean
    assert lines.shape[0] == 17
    for k in range(17):
        line = lines[k][lines[k] >= 0]
        own = model.landmarks[k]
        assert own in line
        if k == 8:
            continue
        p = mean[line]
        assert (p[:, 1] - mean[own, 1]).abs().max() < 3.0  # at the landmark's height
        assert (torch.sign(p[:, 0]) == torch.sign(mean[own, 0])).all()  # on its side
        z0 = float(mean[model.landmarks[[0, 16]], 2].mean()) - 20.0
        angle = torch.atan2(p[:, 0].abs(), p[:, 2] - z0)
        assert (angle[1:] >= angle[:-1] - 1e-6).all()  # front to back
        # dense where silhouettes occur (within 45 degrees in front of the landmark)
        near = angle >= angle[line == own] - math.radians(45)
        gaps = (p[near][1:] - p[near][:-1]).norm(dim=-1)
        assert gaps.max() < 10.0 and gaps.mean() < 5.5, (k, gaps)


def test_choice_depends_only_on_pitch_and_yaw(model, faces_shapes, lines):
    verts = faces_shapes[:1].expand(4, -1, -1)
    poses = torch.stack([make_pose(1.0, 6, -45, 0, 0, 0), make_pose(2.5, 6, -45, 0, 50, -20),
                         make_pose(0.7, 6, -45, 9, 10, 10), make_pose(1.0, 6, -45, -10, 3, 3)])
    ids, moved = jaw_vertex_ids(verts, poses, model, lines=lines)
    assert moved.any()
    assert (ids == ids[:1]).all() and (moved == moved[:1]).all()


def test_contour_landmarks_project_the_chosen_vertices(model, faces_shapes):
    poses = torch.stack([make_pose(0.9, 0, y, 0, 112, 100) for y in (-50, 0, 30, 60)])
    lm, ids = landmarks_per_mesh(faces_shapes, poses, model)
    assert lm.shape == (4, 68, 2) and ids.shape == (4, 68)
    assert (ids[:, 17:] == model.landmarks[17:]).all()
    ref = torch.stack([project(faces_shapes[i, ids[i]], poses[i]) for i in range(4)])
    assert torch.allclose(lm, ref, atol=1e-4)


def test_contour_landmarks_gradients(model, faces_shapes):
    verts = faces_shapes[:1].double()
    pose = make_pose(0.9, 5, -40, 3, 112, 100)[None].double().requires_grad_(True)
    ids = landmarks_per_mesh(verts, pose.detach(), model)[1]
    for sign in (-1, 1):  # the vertex choice does not change within gradcheck's steps
        bumped = pose.detach() + sign * 1e-6
        assert (landmarks_per_mesh(verts, bumped, model)[1] == ids).all()
    assert torch.autograd.gradcheck(lambda p: landmarks_per_mesh(verts, p, model)[0], (pose,),
                                    eps=1e-6, atol=1e-5, fast_mode=True)
    v = verts.clone().requires_grad_(True)
    landmarks_per_mesh(v, pose.detach(), model)[0].sum().backward()
    assert v.grad.abs().sum() > 0 and math.isfinite(float(v.grad.abs().sum()))


def _pinhole_rim_distance(verts, faces, pose, camera, points):
    """`_rim_distance` for a pinhole camera: the front/back crease is taken against each face's
    own ray to the camera centre (model space), ``points`` px in the pinhole image."""
    rot = euler_to_matrix(pose[1:4])
    eye = rot.T @ torch.tensor([0.0, 0.0, float(camera.ref_depth(pose)) + camera.distance_mm])
    v0, v1, v2 = (verts[faces[:, i]] for i in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
    front = (fn * (eye - (v0 + v1 + v2) / 3)).sum(-1) > 0
    uniq, inv, n_all = _edge_table(faces)
    n_front = torch.zeros(len(uniq)).index_add_(0, inv, torch.cat([front, front, front]).float())
    rim = uniq[(n_all == 2) & (n_front == 1)]
    uv = project(camera.view_verts(verts, pose), pose)
    a, b = uv[rim[:, 0]], uv[rim[:, 1]]
    ab = b - a
    t = (((points[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
    return (points[:, None] - (a[None] + t[..., None] * ab[None])).norm(dim=-1).min(1).values


@pytest.mark.parametrize("yaw", [-35.0, 30.0])
def test_pinhole_contour_follows_the_pinhole_silhouette(model, faces_shapes, lines, yaw):
    """Seen from 250 mm, the far-side jawline lies on the pinhole image's outline (the crease
    against each face's own ray), which the weak-perspective choice misses."""
    camera = Pinhole(250.0, tuple(float(c) for c in model.landmarks_3d(model.mean[None])[0].mean(0)))
    proj = projector_with(model, lines)
    near_rim, weak_off = [], []
    for k, verts in enumerate(faces_shapes):
        pose = make_pose(1.0, pitch_deg=[-8, 0, 6, 10][k], yaw_deg=yaw, roll_deg=[4, 0, -5, 2][k], tx=0, ty=0)
        for cam, out in ((camera, near_rim), (None, weak_off)):
            res = proj.project(verts[None], pose[None, None], camera=cam)
            moved = res.on_silhouette[0, 0, :17]
            assert moved.sum() >= 3, (yaw, k)
            # both choices scored in the pinhole image
            pts = project(camera.view_verts(verts[res.vertex_ids[0, 0, :17][moved][:, 0]], pose), pose)
            if cam is not None:
                assert torch.allclose(pts, res.uv[0, 0, :17][moved], atol=1e-4)
            out.append(_pinhole_rim_distance(verts, model.faces, pose, camera, pts))
    near_rim, weak_off = torch.cat(near_rim), torch.cat(weak_off)
    assert near_rim.max() < 1.5, near_rim
    assert weak_off.mean() > 2.0 * near_rim.mean(), (weak_off.mean(), near_rim.mean())
