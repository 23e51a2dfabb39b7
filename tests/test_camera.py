"""Camera conventions (pinned) and agreement with PyTorch3D's own rasterizer."""
from __future__ import annotations

import math

import pytest
import torch

from mvf.face.model import FaceModel
from renderer.camera import DEPTH_OFFSET, make_pose, project, project_with_depth, to_pytorch3d, view_directions
from renderer.rotations import euler_to_matrix, matrix_to_euler


@pytest.fixture(scope="module")
def model():
    return FaceModel.load()


def test_rotation_orthonormal_and_euler_round_trip():
    angles = (torch.rand(50, 3) - 0.5) * torch.tensor([2.0, 2.8, 2.0])
    rot = euler_to_matrix(angles)
    eye = torch.eye(3).expand(50, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(50), atol=1e-5)
    assert torch.allclose(matrix_to_euler(rot), angles, atol=1e-4)


def test_euler_order_is_roll_yaw_pitch():
    a, b, g = 0.3, -0.5, 0.2
    rx = euler_to_matrix(torch.tensor([a, 0.0, 0.0]))
    ry = euler_to_matrix(torch.tensor([0.0, b, 0.0]))
    rz = euler_to_matrix(torch.tensor([0.0, 0.0, g]))
    assert torch.allclose(euler_to_matrix(torch.tensor([a, b, g])), rz @ ry @ rx, atol=1e-6)


def test_frontal_projection_frame(model):
    """Zero angles: model +x (subject's left) -> image right, model +y (up) -> image up."""
    pose = make_pose(0.5, tx=100.0, ty=90.0)
    uv = project(model.mean[None], pose[None])[0]
    lm = uv[model.landmarks]
    assert project(torch.zeros(1, 1, 3), pose[None])[0, 0].tolist() == pytest.approx([100.0, 90.0])
    assert lm[42:48, 0].mean() > lm[36:42, 0].mean()     # subject's left eye on the image's right
    assert lm[8, 1] > lm[30, 1] > lm[27, 1]              # chin below nose tip below nose bridge
    width = lm[16, 0] - lm[0, 0]
    span = model.mean[model.landmarks[16], 0] - model.mean[model.landmarks[0], 0]
    assert width.item() == pytest.approx(0.5 * span.item(), rel=1e-5)  # f is px per mm


@pytest.mark.parametrize("axis", ["yaw", "pitch", "roll"])
def test_angle_signs(model, axis):
    lm3 = model.mean[model.landmarks]
    base = project(lm3[None], make_pose(1.0, tx=100, ty=100)[None])[0]
    kw = {"yaw": {"yaw_deg": 20}, "pitch": {"pitch_deg": 20}, "roll": {"roll_deg": 20}}[axis]
    moved = project(lm3[None], make_pose(1.0, tx=100, ty=100, **kw)[None])[0]
    nose = 30
    if axis == "yaw":   # positive yaw: the nose turns towards the image's right (+u)
        assert moved[nose, 0] - base[nose, 0] > 3.0
    elif axis == "pitch":  # positive pitch: the nose turns down (+v)
        assert moved[nose, 1] - base[nose, 1] > 3.0
    else:  # positive roll: anticlockwise in the image; the brow (top) moves to -u
        brow = 27
        assert moved[brow, 0] - base[brow, 0] < -3.0


def test_left_view_shows_subjects_left_cheek(model):
    """The 'left' view (negative yaw) brings the subject's left side nearer the camera."""
    lm3 = model.mean[model.landmarks][None]
    left = project_with_depth(lm3, make_pose(1.0, yaw_deg=-40, tx=100, ty=100)[None])[0]
    right = project_with_depth(lm3, make_pose(1.0, yaw_deg=40, tx=100, ty=100)[None])[0]
    # depth: smaller is nearer. Jaw point 16 (subject's left) vs 0 (subject's right).
    assert left[16, 2] < left[0, 2] and right[0, 2] < right[16, 2]
    assert left[30, 0] < 100 < right[30, 0]  # nose points to the image's left in the left view
    view = view_directions(make_pose(1.0, yaw_deg=-40)[None])[0]
    assert view[0] > 0.5  # the camera sits on the subject's left (+x)


def test_batched_shapes(model):
    verts = model.mean.expand(2, 1, -1, -1)
    poses = torch.stack([make_pose(1.0, 0, y, 0, 112, 112) for y in (-30, 0, 30)]).expand(2, 3, 6)
    assert project(verts, poses).shape == (2, 3, model.n_verts, 2)
    assert project_with_depth(verts, poses).shape == (2, 3, model.n_verts, 3)


@pytest.mark.parametrize("angles,f,size", [((0, 0, 0), 0.3, (96, 96)), ((10, -35, 5), 0.28, (96, 96)),
                                           ((-8, 40, -6), 0.25, (80, 112))])
def test_pytorch3d_rasterizer_agrees(model, angles, f, size):
    """PyTorch3D draws the mesh exactly where `project` puts it."""
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes

    h, w = size
    pose = make_pose(f, *angles, tx=w / 2 + 3.3, ty=h / 2 - 6.1)[None]
    verts = model.mean[None]
    rast = MeshRasterizer(cameras=to_pytorch3d(pose, size),
                          raster_settings=RasterizationSettings(image_size=size, faces_per_pixel=1))
    frags = rast(Meshes(verts, model.faces[None]))
    mask = frags.pix_to_face[0, ..., 0] >= 0
    uvz = project_with_depth(verts, pose)[0]
    # every projected landmark lands inside the silhouette. The face region has open eye holes
    # (the eyeballs are dropped) and the eyelid landmarks sit on the rim of those holes, so the
    # test allows 1 px (the landmark's pixel or a neighbour is covered); so do jawline points that
    # and brow ends sit on the silhouette of a turned head. Nose and mouth must be strictly covered.
    lm = uvz[model.landmarks]
    cols, rows = lm[:, 0].floor().long(), lm[:, 1].floor().long()
    near = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0
    assert near[rows, cols].all()
    interior = list(range(27, 36)) + list(range(48, 68))  # nose and mouth
    assert mask[rows[interior], cols[interior]].all()
    # silhouette bounding box == projected vertices' bounding box, within 1 px
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert abs(xs.min().item() - uvz[:, 0].min().item()) <= 1.0
    assert abs(xs.max().item() + 1 - uvz[:, 0].max().item()) <= 1.0
    assert abs(ys.min().item() - uvz[:, 1].min().item()) <= 1.0
    assert abs(ys.max().item() + 1 - uvz[:, 1].max().item()) <= 1.0
    # the z-buffer reports our depth: the nearest vertex depth bounds zbuf from below
    z = frags.zbuf[0, ..., 0][mask]
    assert z.min().item() == pytest.approx(uvz[:, 2].min().item(), abs=1.0)
    assert z.max().item() <= DEPTH_OFFSET + 200.0


@pytest.mark.parametrize("angles,distance", [((0, 0, 0), 400.0), ((-10, 35, 6), 600.0)])
def test_perspective_prewarp_is_pytorch3d_pinhole(model, angles, distance):
    """The weak-perspective image of the pre-warped mesh is PyTorch3D's pinhole image of the mesh:
    the same vertex pixels and (its rasterization) the same faces per pixel."""
    from pytorch3d.renderer import MeshRasterizer, PerspectiveCameras, RasterizationSettings
    from pytorch3d.structures import Meshes

    from renderer import rasterize
    from renderer.camera import perspective_prewarp, pixels_to_ndc, rotate

    size, f = (96, 96), 0.3
    pose = make_pose(f, *angles, tx=45.2, ty=51.7)[None]
    verts = model.mean[None]
    ref = float(rotate(verts, pose)[0, :, 2].mean())
    # PyTorch3D: view = diag(-1, 1, -1) R v + (0, 0, D + ref), NDC focal 2 f D / S, principal point (tx, ty)
    flip = torch.tensor([-1.0, 1.0, -1.0])
    rot_view = flip[:, None] * euler_to_matrix(pose[:, 1:4])
    cams = PerspectiveCameras(focal_length=torch.full((1, 2), 2.0 * f * distance / size[0]),
                              principal_point=pixels_to_ndc(pose[:, 4:6], size),
                              R=rot_view.transpose(1, 2), T=torch.tensor([[0.0, 0.0, distance + ref]]), in_ndc=True)
    ndc = cams.transform_points(verts)[0, :, :2]
    pix = torch.stack([(1.0 - ndc[:, 0]) * size[1] / 2, (1.0 - ndc[:, 1]) * size[0] / 2], -1)
    assert torch.allclose(pixels_to_ndc(pix, size), ndc, atol=1e-5)  # the NDC -> pixel inverse
    warped = perspective_prewarp(verts, pose, distance, ref)
    ours = project(warped, pose)[0]
    assert torch.allclose(ours, pix, atol=2e-3)
    weak = project(verts, pose)[0]
    assert (ours - weak).norm(dim=-1).max() > 0.5  # the camera's distance shows at this size
    # the vertices' mean depth keeps the magnification f there: their mean pixel barely moves
    assert (ours - weak).mean(0).norm() < 0.3
    frags = MeshRasterizer(cameras=cams, raster_settings=RasterizationSettings(
        image_size=size, faces_per_pixel=1, perspective_correct=False))(Meshes(verts, model.faces[None]))
    p2f = rasterize(warped, model.faces, pose, size, backend="fast").pix_to_face[0, ..., 0]
    theirs = frags.pix_to_face[0, ..., 0]
    agree = (p2f == theirs).float().mean().item()
    assert agree > 0.995 and (theirs >= 0).sum() > 1000
