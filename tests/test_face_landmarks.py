"""The one landmark projector (mvf.face.landmarks): it reproduces the synthetic labels, projects
barycentric points affinely, has finite-difference gradients, and batches like single views."""
from __future__ import annotations

import pytest
import torch

from renderer.camera import make_pose, project, view_directions
from mvf.data.config import SynthConfig
from mvf.data.synth import SynthGenerator
from mvf.face.landmarks import LandmarkProjector, LandmarkSet
from mvf.face.model import FaceModel


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def shapes(model):
    g = torch.Generator().manual_seed(5)
    exp = torch.zeros(2, model.n_exp)
    exp[1, model.exp_names.index("jawOpen")] = 0.5
    return model.decode(torch.randn(2, model.n_id, generator=g), exp)


def views(scale: float = 1.0) -> torch.Tensor:
    """``(2, 3, 6)`` front/left/right poses for two subjects."""
    return torch.stack([
        torch.stack([make_pose(scale, 4, 2, 1, 60, 62), make_pose(scale, -6, -45, 3, 58, 60),
                     make_pose(scale, 8, 50, -4, 63, 61)]),
        torch.stack([make_pose(scale, -3, -5, 0, 61, 64), make_pose(scale, 2, -60, -5, 62, 60),
                     make_pose(scale, 5, 30, 6, 60, 59)]),
    ])


def surface_set(model, k: int = 40, seed: int = 0, min_facing: float = -2.0) -> LandmarkSet:
    """K random points inside random triangles (no contour lines)."""
    g = torch.Generator().manual_seed(seed)
    faces = model.faces[torch.randint(0, model.faces.shape[0], (k,), generator=g)]
    bary = torch.rand(k, 3, generator=g) + 0.1
    bary = bary / bary.sum(1, keepdim=True)
    return LandmarkSet(faces, bary, torch.ones(k), torch.ones(k), torch.full((k, 1), -1, dtype=torch.long),
                       torch.zeros(k), torch.arange(k), min_facing=min_facing)


def test_ground_truth_face_with_its_pose_reproduces_the_synthetic_labels(model):
    gen = SynthGenerator(SynthConfig(), model, size=64)
    results = gen.render([gen.draw(3, i) for i in range(2)])
    projector = model.landmark_projector()
    for r in results:
        verts = torch.from_numpy(r.verts)[None]
        pose = torch.from_numpy(r.labels["pose"])[None]
        out = projector.project(verts, pose)
        assert torch.equal(out.uv[0], torch.from_numpy(r.labels["landmarks"]))
        assert torch.equal(out.vertex_ids[0, :, :17, 0], torch.from_numpy(r.labels["jaw_vertex_ids"]).long())
        assert torch.equal(out.on_silhouette[0, :, :17], torch.from_numpy(r.labels["jaw_on_silhouette"]))
        assert not out.on_silhouette[0, :, 17:].any() and (out.weight == 1).all()


def test_barycentric_points_project_to_the_combination_of_projected_corners(model, shapes):
    lset = surface_set(model)
    projector = LandmarkProjector(model, lset)
    poses = views(0.8)
    out = projector.project(shapes, poses)
    assert out.uv.shape == (2, 3, 40, 2) and out.vertex_ids.shape == (2, 3, 40, 3)
    assert torch.equal(out.vertex_ids, lset.faces.expand(2, 3, -1, -1))
    corners = project(shapes[:, None, lset.faces.reshape(-1)], poses).reshape(2, 3, 40, 3, 2)
    ref = (corners * lset.bary[:, :, None]).sum(-2)
    assert torch.allclose(out.uv, ref, atol=1e-4)


def test_back_facing_points_get_weight_zero(model, shapes):
    """With ``min_facing`` 0 a point counts only where its triangle faces the camera."""
    lset = surface_set(model, k=200, seed=1, min_facing=0.0)
    poses = views()
    out = LandmarkProjector(model, lset).project(shapes, poses)
    corners = shapes[:, None, lset.faces.reshape(-1)].reshape(2, 1, 200, 3, 3)
    normal = torch.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :], dim=-1)
    facing = (normal * view_directions(poses)[:, :, None]).sum(-1)
    assert torch.equal(out.weight == 1, facing >= 0) and (out.weight == 0).any() and (out.weight == 1).any()


def test_gradients_match_finite_differences(model):
    """Double-precision gradcheck in shape coefficients and poses (iBUG-68 with the jawline search,
    and barycentric points); the discrete choice stays fixed within the steps."""
    basis = model.id_basis[:3].double()
    mean = model.mean.double()
    pose = views()[:1].double() + 0.01
    for projector in (model.landmark_projector(), LandmarkProjector(model, surface_set(model, k=12))):
        coeffs = (0.3 * torch.randn(1, 3, dtype=torch.float64)).requires_grad_()
        p = pose.clone().requires_grad_()

        def f(c, p):
            return projector(mean + torch.einsum("bk,knc->bnc", c, basis), p)

        choice = projector.select(mean + torch.einsum("bk,knc->bnc", coeffs.detach(), basis), pose)
        for sign in (-1, 1):
            bumped = projector.select(mean + torch.einsum("bk,knc->bnc", coeffs.detach(), basis), pose + sign * 1e-6)
            assert torch.equal(bumped.tri, choice.tri)
        assert torch.autograd.gradcheck(f, (coeffs, p), eps=1e-6, atol=1e-4)


def test_batched_equals_per_view_and_compact_equals_full(model, shapes):
    projector = model.landmark_projector(n_id=model.n_id)
    poses = views(0.9)
    out = projector.project(shapes, poses)
    for b in range(2):
        for v in range(3):
            one = projector.project(shapes[b:b + 1], poses[b:b + 1, v:v + 1])
            assert torch.equal(one.uv[0, 0], out.uv[b, v])
            assert torch.equal(one.vertex_ids[0, 0], out.vertex_ids[b, v])
    assert out.on_silhouette[:, 1:, :17].any()  # side views: the far jaw is on the outline
    fixed = model.landmark_projector(model.landmark_set(contour=False))(shapes, poses)
    assert torch.equal(out.uv[..., 17:, :], fixed[..., 17:, :])
    assert (out.uv[:, 1:, :17] - fixed[:, 1:, :17]).norm(dim=-1).max() > 1.0
    g = torch.Generator().manual_seed(2)
    id_c, exp_c = torch.randn(2, model.n_id, generator=g), 0.3 * torch.rand(2, model.n_exp, generator=g)
    full = projector(model.decode(id_c, exp_c), poses)
    compact = projector(projector.decode(id_c, exp_c), poses)
    assert torch.allclose(full, compact, atol=1e-4)


def test_jaw_weight_and_set_subset(model):
    lset = model.landmark_set(w_jaw=0.5)
    assert (lset.weights[:17] == 0.5).all() and (lset.weights[17:] == 1).all()
    inner = lset.subset(~lset.is_contour)
    assert inner.n_points == 51 and not inner.is_contour.any()
    assert torch.equal(inner.positions(model.mean), model.landmarks_3d(model.mean)[17:])
