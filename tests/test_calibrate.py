"""The calibrated detector landmarks (`mvf.recon.calibrate`) and generic landmark sets in the fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mvf.align import aligned_rmse
from mvf.face.landmarks import LandmarkSet, ibug68_set, landmark_set_from_arrays, landmark_set_to_numpy
from mvf.fileio import write_image
from mvf.losses.supervised import face_region
from mvf.face.landmark_asset import DEFAULT_SET, load_landmark_set
from mvf.recon.calibrate import (build_mediapipe_set, calibration_renders, detect_calibration, point_residuals,
                                 snap_to_surface)
from mvf.recon.detect import landmarks_from_raw478
from mvf.recon.fit import FitConfig, fit
from mvf.recon.pipeline import reconstruct
from mvf.recon.views import detect_views
from mvf.train.config import ValidationConfig
from renderer.camera import make_pose
from renderer.views import VIEWS


def test_set_fit_recovers_shape_from_exact_points(model):
    """Fitting a dense embedded set to its exact projections beats the mean face by far."""
    n = 200
    g = torch.Generator().manual_seed(1)
    tri = torch.randint(0, model.faces.shape[0], (n,), generator=g)
    bary = torch.rand(n, 3, generator=g)
    bary = bary / bary.sum(1, keepdim=True)
    lset = LandmarkSet(model.faces[tri], bary, torch.ones(n), torch.ones(n),
                       torch.full((n, 1), -1, dtype=torch.long), torch.zeros(n), torch.arange(n),
                       min_facing=0.0)
    idc = torch.randn(1, model.n_id, generator=g).clamp(-2, 2)
    verts = model.decode(idc, torch.zeros(1, model.n_exp))
    poses = torch.stack([make_pose(1.0, 0, yaw, 0, 112, 112) for yaw in (0.0, -35.0, 35.0)])
    uv = model.landmark_projector(lset).project(verts, poses[None]).uv[0]
    res = fit(model, torch.zeros(3, 3, 224, 224), uv, None, FitConfig(n_id=100, landmark_steps=30),
              landmark_set=lset)
    fitted = model.decode(res.id[None], res.exp[None])
    assert float(aligned_rmse(fitted, verts)) < 0.5 * float(aligned_rmse(model.mean[None], verts))


def test_round_trip_and_subset(model):
    lset = ibug68_set(model)
    back = landmark_set_from_arrays(landmark_set_to_numpy(lset))
    assert torch.equal(back.faces, lset.faces) and torch.equal(back.contour_lines, lset.contour_lines)
    sub = lset.subset(torch.arange(68) >= 17)
    assert sub.n_points == 51 and not bool(sub.is_contour.any())


def test_snap_to_surface():
    verts = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]])
    tri, bar = snap_to_surface(np.array([[0.2, 0.2, -0.5], [2.0, -1.0, 0.0]]), verts, np.array([[0, 1, 2]]))
    assert tri[0] == 0 and np.allclose(bar[0], [0.6, 0.2, 0.2])
    assert np.allclose(bar[1], [0, 1, 0])


@pytest.mark.slow
def test_calibration_is_deterministic_and_beats_the_68_table_on_unseen_renders(model):
    """Built twice from a few subjects: identical. On renders of another seed, the calibrated
    points' detections lie closer to their embedded surface points than the 68-point table's
    detections to the model's 68 landmarks (both in model mm)."""
    a, _ = build_mediapipe_set(model, seed=11, n_subjects=16, sizes=(224,))
    b, _ = build_mediapipe_set(model, seed=11, n_subjects=16, sizes=(224,))
    assert torch.equal(a.faces, b.faces) and torch.equal(a.bary, b.bary) and torch.equal(a.weights, b.weights)
    views = detect_calibration(model, seed=50_000, n_subjects=4, sizes=(224,))
    d_cal, ok_cal, moved = point_residuals(model, a, views)
    assert (ok_cal & ~moved).sum() > 0.5 * ok_cal.size
    cal = float(np.median(d_cal[ok_cal & ~moved]))
    # the 68-point table: mediapipe's 478 -> 68 mapping vs the model's own landmarks
    proj = model.landmark_projector()
    d68 = []
    for item in views:
        pose = item["pose"][None, None]
        uv = proj.project(item["verts"][None], pose).uv[0, 0]
        pts = landmarks_from_raw478(item["raw"], (item["size"], item["size"])).points
        d68.append(((uv - torch.as_tensor(pts, dtype=torch.float32)).norm(dim=-1) / float(pose[0, 0, 0])).numpy())
    table = float(np.median(np.concatenate(d68)))
    assert cal < 0.8 * table, (cal, table)


def test_default_asset_loads_for_the_model(model):
    if not DEFAULT_SET.is_file():
        pytest.skip("assets/mediapipe_landmarks.npz not built (make setup builds it)")
    lset = load_landmark_set(None, model)
    assert lset is not None and lset.n_points == 468
    assert lset.meta["seed"] is not None and float(lset.weights.max()) > 0


def test_fit_with_detected_calibrated_points_beats_the_mean_face(model, tmp_path):
    """Synthetic triplets (a seed no calibration or benchmark set uses) through the real detector
    and `mvf reconstruct`'s fit: 3D error at least 15% below the mean face's on average (the
    benchmark's test set gives ~29%, tools/bench_real.py)."""
    assert DEFAULT_SET.is_file(), "assets/mediapipe_landmarks.npz missing: run `make setup`"
    region = face_region(model, ValidationConfig().face_radius_mm)
    fit_rmse, mean_rmse = [], []
    for subj in calibration_renders(model, seed=31_337, n_subjects=3, size=224):
        paths = {}
        for v, name in enumerate(VIEWS):
            paths[name] = tmp_path / f"{subj.index}_{name}.png"
            write_image(paths[name], subj.images[v])
        views = detect_views(paths)
        assert views.detector_points is not None and views.detector_points.shape == (3, 478, 2)
        rec = reconstruct(views, fit_config=FitConfig(), face=model)
        assert rec.info["landmarks"].startswith("calibrated")
        gt = torch.from_numpy(subj.verts).float()[None]
        fit_rmse.append(float(aligned_rmse(rec.verts[None].float(), gt, region)[0]))
        mean_rmse.append(float(aligned_rmse(model.mean[None], gt, region)[0]))
    assert np.mean(fit_rmse) < 0.85 * np.mean(mean_rmse), (fit_rmse, mean_rmse)
