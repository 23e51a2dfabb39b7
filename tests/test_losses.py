"""Supervised losses: zero at the ground truth, positive away from it, right units and gradients
(the projector itself: tests/test_face_landmarks.py); Procrustes alignment and the aligned vertex RMSE."""
from __future__ import annotations

import math

import pytest
import torch

from mvf.align import aligned_rmse, procrustes
from renderer.camera import make_pose
from renderer.rotations import euler_to_matrix
from mvf.face.landmarks import LandmarkProjector
from mvf.losses.supervised import coefficient_prior, face_region, landmark_loss, param_loss, pose_loss, vertex_loss
from mvf.net.network import PoseNorm

pytestmark = pytest.mark.usefixtures("one_thread")

S = 128


@pytest.fixture(scope="module")
def gt(face):
    """A batch of 2 random faces seen front/left/right, with exact projected landmarks."""
    g = torch.Generator().manual_seed(0)
    idc = torch.randn(2, 100, generator=g)
    exp = torch.zeros(2, 53)
    exp[0, [3, 20]] = torch.tensor([0.7, 0.3])
    pose = torch.stack([
        torch.stack([make_pose(0.4, 5, 3, 2, 64, 60), make_pose(0.42, -5, -40, 4, 62, 58),
                     make_pose(0.38, 10, 45, -3, 66, 63)]),
        torch.stack([make_pose(0.45, -8, -6, 0, 60, 66), make_pose(0.4, 0, -55, -6, 64, 64),
                     make_pose(0.4, 3, 25, 8, 61, 59)]),
    ])
    verts = face.decode(idc, exp)
    lm = LandmarkProjector(face)(verts, pose)
    visible = torch.ones(2, 3, 68, dtype=torch.bool)
    visible[1, 2, 40:50] = False
    return {"id": idc, "exp": exp, "pose": pose, "verts": verts, "landmarks": lm, "visible": visible}


def test_all_losses_are_zero_at_the_ground_truth(face, gt):
    proj = LandmarkProjector(face)
    scale = torch.tensor(PoseNorm.for_landmarks(S, face.landmarks_3d(face.mean[None])[0]).scale)
    assert landmark_loss(proj(gt["verts"], gt["pose"]), gt["landmarks"], gt["visible"]).item() == pytest.approx(0, abs=1e-5)
    assert pose_loss(gt["pose"], gt["pose"], scale).item() == 0.0
    assert param_loss(gt["id"], gt["exp"], gt["id"], gt["exp"]).item() == 0.0
    assert vertex_loss(gt["verts"], gt["verts"]).item() == pytest.approx(0, abs=1e-6)
    assert coefficient_prior(torch.zeros(2, 100), torch.zeros(2, 53)).item() == 0.0


@pytest.mark.parametrize("amount", [0.05, 0.3])
def test_losses_grow_away_from_the_ground_truth(face, gt, amount):
    g = torch.Generator().manual_seed(1)
    proj = LandmarkProjector(face)
    scale = torch.tensor(PoseNorm.for_landmarks(S, face.landmarks_3d(face.mean[None])[0]).scale)
    d_id = amount * torch.randn(2, 100, generator=g)
    d_pose = amount * torch.randn(2, 3, 6, generator=g) * scale
    verts = face.decode(gt["id"] + d_id, gt["exp"])
    lm_loss = landmark_loss(proj(verts, gt["pose"] + d_pose), gt["landmarks"], gt["visible"]).item()
    p_loss = pose_loss(gt["pose"] + d_pose, gt["pose"], scale).item()
    c_loss = param_loss(gt["id"] + d_id, gt["exp"], gt["id"], gt["exp"]).item()
    v_loss = vertex_loss(verts, gt["verts"]).item()
    assert lm_loss > 0.1 * amount and p_loss > 0 and c_loss > 0 and v_loss > 0.5 * amount
    assert p_loss == pytest.approx(((d_pose / scale) ** 2).mean().item(), rel=1e-4)
    assert c_loss == pytest.approx((d_id ** 2).mean().item(), rel=1e-4)


def test_landmark_loss_is_mean_pixel_distance_over_visible_points():
    target = torch.rand(2, 3, 68, 2) * 100
    visible = torch.rand(2, 3, 68) > 0.3
    pred = target + torch.tensor([3.0, 4.0])  # 5 px everywhere
    pred = torch.where(visible[..., None], pred, pred + 50.0)  # hidden points far off: ignored
    assert landmark_loss(pred, target, visible).item() == pytest.approx(5.0, abs=1e-4)
    assert landmark_loss(pred, target, torch.zeros_like(visible)).item() == 0.0


def test_vertex_loss_is_mean_distance_in_mm(face, gt):
    shifted = gt["verts"] + torch.tensor([0.0, 1.2, -1.6])  # 2 mm everywhere
    assert vertex_loss(shifted, gt["verts"]).item() == pytest.approx(2.0, abs=1e-4)
    region = face_region(face, 95.0)
    assert vertex_loss(shifted, gt["verts"], region).item() == pytest.approx(2.0, abs=1e-4)


def test_param_loss_uses_the_first_k_ground_truth_coefficients(gt):
    pred_id, pred_exp = gt["id"][:, :40].clone(), gt["exp"][:, :10].clone()
    assert param_loss(pred_id, pred_exp, gt["id"], gt["exp"]).item() == 0.0
    pred_id[:, 0] += 2.0
    assert param_loss(pred_id, pred_exp, gt["id"], gt["exp"]).item() == pytest.approx(4.0 / 40, rel=1e-5)


def test_coefficient_prior_penalises_large_and_out_of_range_coefficients():
    z_id, z_exp = torch.zeros(1, 100), torch.zeros(1, 53)
    assert coefficient_prior(z_id + 1.0, z_exp).item() == pytest.approx(1.0)
    inside = coefficient_prior(z_id, z_exp + 0.5).item()
    outside = coefficient_prior(z_id, z_exp - 0.5).item()
    assert inside == pytest.approx(0.25) and outside == pytest.approx(0.5)


def test_losses_have_finite_difference_gradients(face, gt):
    """Double-precision gradcheck of the landmark and vertex losses in shape and pose."""
    proj = LandmarkProjector(face)
    basis = face.id_basis[:3].double()
    mean = face.mean.double()
    pose = gt["pose"][:1].double() + 0.01  # keep away from contour ties
    target_lm = gt["landmarks"][:1].double()
    target_v = gt["verts"][:1].double()

    def f(coeffs, pose):
        verts = mean + torch.einsum("bk,knc->bnc", coeffs, basis)
        return landmark_loss(proj(verts, pose), target_lm) + vertex_loss(verts, target_v)

    coeffs = (0.3 * torch.randn(1, 3, dtype=torch.float64)).requires_grad_()
    pose = pose.clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (coeffs, pose), eps=1e-6, atol=1e-4)


# ----------------------------------------------------------------------------- alignment
def test_procrustes_recovers_a_known_similarity(face):
    g = torch.Generator().manual_seed(2)
    pts = face.mean[None, ::10].repeat(3, 1, 1)
    rot = euler_to_matrix(torch.randn(3, 3, generator=g))
    t = 20 * torch.randn(3, 3, generator=g)
    s = torch.tensor([1.0, 1.1, 0.9])
    moved = s[:, None, None] * pts @ rot.transpose(1, 2) + t[:, None]
    r_est, t_est, s_est = procrustes(pts, moved, scale=True)
    assert torch.allclose(r_est, rot, atol=1e-5)
    assert torch.allclose(t_est, t, atol=1e-3)
    assert torch.allclose(s_est, s, atol=1e-5)
    assert torch.allclose(torch.det(procrustes(pts, moved)[0]), torch.ones(3))  # no reflection


def test_aligned_rmse(face, gt):
    g = torch.Generator().manual_seed(3)
    region = face_region(face, 95.0)
    rot = euler_to_matrix(0.3 * torch.randn(2, 3, generator=g))
    moved = gt["verts"] @ rot.transpose(1, 2) + torch.tensor([5.0, -3.0, 8.0])
    assert aligned_rmse(moved, gt["verts"], region).max().item() < 1e-3
    assert aligned_rmse(moved, gt["verts"], region, mode="none").min().item() > 1.0
    bigger = 1.05 * gt["verts"]
    assert aligned_rmse(bigger, gt["verts"], region, mode="rigid").min().item() > 1.0
    assert aligned_rmse(bigger, gt["verts"], region, mode="similarity").max().item() < 1e-3
    noisy = gt["verts"] + 0.5 * torch.randn(gt["verts"].shape, generator=g)
    rmse = aligned_rmse(noisy, gt["verts"], region)
    expected = 0.5 * math.sqrt(3)
    assert torch.allclose(rmse, torch.full_like(rmse, expected), rtol=0.05)


def test_face_region_is_around_the_nose(face):
    region = face_region(face, 95.0)
    nose = face.mean[face.landmarks[30]]
    assert 0.3 * face.n_verts < len(region) < 0.9 * face.n_verts
    assert set(face.landmarks[17:].tolist()) <= set(region.tolist())  # inner landmarks inside
    assert (face.mean[region] - nose).norm(dim=-1).max() < 95.0
