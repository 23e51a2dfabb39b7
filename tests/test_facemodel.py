"""The face model asset against the ICT source data, the raw-clone path, and the BFM09 loader."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mvf.errors import MvfError
from mvf.face.model import DEFAULT_ASSET, FaceModel, build_ict_asset, find_ict_source, load_bfm09
from mvf.io.obj import read_vertices

ICT = find_ict_source(None)


@pytest.fixture(scope="module")
def shapes():
    with np.load(ICT / "shapes.npz") as z:
        return {k: z[k] for k in ("neutral", "identity", "expression", "expression_names")}


@pytest.fixture(scope="module")
def model():
    return FaceModel.load()


def test_asset_sizes_and_units(model):
    assert model.n_verts == 9409 and model.region == "face"
    assert model.n_id == 100 and model.n_exp == 53
    assert model.faces.shape[1] == 3 and int(model.faces.max()) < model.n_verts
    width = (model.mean[:, 0].max() - model.mean[:, 0].min()).item()
    assert 150.0 < width < 200.0  # mm
    assert model.meta["units"] == "mm"
    assert model.verts_uvs.shape[1] == 2 and model.faces_uvs.shape == model.faces.shape


def test_decode_matches_source(model, shapes):
    """decode == 10 x (neutral + sum id_k identity_k + sum exp_j expression_j) on the face region."""
    names = [str(n) for n in shapes["expression_names"]]
    order = [names.index(n) for n in model.exp_names]
    rng = np.random.default_rng(0)
    n = model.n_verts
    for _ in range(3):
        idc = rng.standard_normal(100)
        exc = rng.uniform(0, 1, 53)
        ref = shapes["neutral"][:n].astype(np.float64)
        ref = ref + np.tensordot(idc, shapes["identity"][:, :n].astype(np.float64), 1)
        ref = ref + np.tensordot(exc, shapes["expression"][order][:, :n].astype(np.float64), 1)
        got = model.decode(torch.tensor(idc, dtype=torch.float32)[None],
                           torch.tensor(exc, dtype=torch.float32)[None])[0].double().numpy()
        assert np.abs(got - 10.0 * ref).max() < 1e-3


def test_decode_batched_differentiable_and_truncated(model):
    idc = torch.randn(4, 20, requires_grad=True)
    exc = torch.rand(4, 10, requires_grad=True)
    verts = model.decode(idc, exc)
    assert verts.shape == (4, model.n_verts, 3)
    verts.square().sum().backward()
    assert idc.grad.abs().sum() > 0 and exc.grad.abs().sum() > 0
    # the first k modes only: truncated coefficients == full ones padded with zeros
    full = model.decode(torch.cat([idc.detach(), torch.zeros(4, 80)], 1),
                        torch.cat([exc.detach(), torch.zeros(4, 43)], 1))
    assert torch.allclose(verts.detach(), full, atol=1e-4)
    sub = model.decode(idc.detach(), exc.detach(), vertex_ids=model.landmarks)
    assert torch.allclose(sub, model.landmarks_3d(verts.detach()), atol=1e-4)
    with pytest.raises(MvfError):
        model.decode(torch.zeros(1, 101), torch.zeros(1, 1))


def test_landmarks_match_source(model):
    """The asset's landmark vertices sit on the source mesh's landmark vertices."""
    ids = json.loads((ICT / "vertex_indices.json").read_text())["idx_to_landmark_verts"]
    neutral_obj = read_vertices(ICT / "generic_neutral_mesh.obj")
    assert model.landmarks.tolist() == ids
    got = model.mean[model.landmarks].double().numpy()
    assert np.abs(got - 10.0 * neutral_obj[ids]).max() < 1e-3
    lm = got
    # anatomy in model axes (+x = subject's left, +y up, +z out of the face)
    assert lm[36:42, 0].mean() < 0 < lm[42:48, 0].mean()       # right eye at -x, left eye at +x
    assert lm[30, 2] == pytest.approx(lm[:, 2].max())          # nose tip is the most forward point
    assert lm[8, 1] < lm[57, 1] < lm[33, 1] < lm[27, 1]        # chin < lower lip < nose base < nose bridge


def test_contour_candidates(model):
    lines = model.contour_lines
    assert lines.shape[0] == 17
    for k in range(17):
        ids = lines[k][lines[k] >= 0]
        assert len(ids) >= (1 if k == 8 else 5)  # the chin keeps its own vertex
        assert int(model.landmarks[k]) in ids.tolist()
        if k < 8:
            assert (model.mean[ids, 0] < 0).all()   # subject's right side
        elif k > 8:
            assert (model.mean[ids, 0] > 0).all()


def test_model_to_device_and_select(model):
    m = FaceModel.load(n_id=10, n_exp=5).to("cpu")
    assert m.n_id == 10 and m.n_exp == 5
    verts = m.decode(*m.zero_coeffs(2))
    assert torch.allclose(verts[0], m.mean)
    assert m.select(verts, [0, 5]).shape == (2, 2, 3)
    with pytest.raises(MvfError):
        FaceModel.load(n_id=101)


def test_raw_ict_clone(tmp_path, shapes):
    """A raw ICT-FaceKit clone (FaceXModel/ OBJ files) builds the same asset as shapes.npz."""
    src = tmp_path / "ICT-FaceKit" / "FaceXModel"
    src.mkdir(parents=True)
    (src / "generic_neutral_mesh.obj").symlink_to(ICT / "generic_neutral_mesh.obj")
    indices = json.loads((ICT / "vertex_indices.json").read_text())
    names = [str(n) for n in shapes["expression_names"]]
    keep = ["jawOpen", "mouthSmile_L"]
    indices["expressions"] = keep
    (src / "vertex_indices.json").write_text(json.dumps(indices))
    neutral = shapes["neutral"].astype(np.float64)

    def write_obj(path: Path, verts: np.ndarray) -> None:
        path.write_text("".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in verts))

    for k in range(2):
        write_obj(src / f"identity{k:03d}.obj", neutral + shapes["identity"][k])
    for name in keep:
        write_obj(src / f"{name}.obj", neutral + shapes["expression"][names.index(name)])
    assert find_ict_source(tmp_path / "ICT-FaceKit") == src
    out = tmp_path / "m.npz"
    meta = build_ict_asset(src, out, region="narrow")
    m = FaceModel.load(out)
    assert meta["region"] == "narrow" and m.n_verts == 6706 and m.n_id == 2 and m.n_exp == 2
    assert m.exp_names == keep
    ref = 10.0 * (neutral[:6706] + shapes["identity"][1][:6706] + 0.5 * shapes["expression"][names.index("jawOpen")][:6706])
    got = m.decode(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.0]]))[0].numpy()
    assert np.abs(got - ref).max() < 1e-3


def test_missing_sources(tmp_path, monkeypatch):
    with pytest.raises(MvfError, match="no ICT-FaceKit data"):
        find_ict_source(tmp_path)
    monkeypatch.setenv("MVF_ICT_DIR", str(tmp_path / "nothing"))
    with pytest.raises(MvfError, match="nothing"):
        find_ict_source(None)
    monkeypatch.setenv("MVF_ICT_DIR", str(ICT))
    assert find_ict_source(None) == ICT
    with pytest.raises(MvfError, match="not found"):
        FaceModel.load(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(MvfError, match="not a readable face model"):
        FaceModel.load(bad)


def test_bfm09_loader(tmp_path):
    """A tiny BFM09 in 3DDFA format: micrometres in, mm out, sigma-scaled bases."""
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    n, k, ke = 80, 6, 4
    q, _ = np.linalg.qr(rng.standard_normal((3 * n, k)))
    sigma = rng.uniform(1000, 5000, k)
    mu = rng.uniform(-80000, 80000, 3 * n)
    tri = rng.integers(1, n + 1, size=(3, 50))
    keypoints = rng.choice(n, 68, replace=False) + 1
    w_exp = rng.standard_normal((3 * n, ke)) * 300.0
    savemat(tmp_path / "Model_Shape.mat", {"w": q, "mu_shape": mu[:, None], "sigma": sigma[:, None],
                                           "tri": tri, "keypoints": keypoints[None]})
    savemat(tmp_path / "Model_Expression.mat", {"w_exp": w_exp})
    arrays = load_bfm09(tmp_path / "Model_Shape.mat", tmp_path / "Model_Expression.mat")
    m = FaceModel(arrays)
    alpha = rng.standard_normal(k)
    beta = rng.standard_normal(ke)
    ref_um = mu + q @ (alpha * sigma) + w_exp @ beta
    got = m.decode(torch.tensor(alpha, dtype=torch.float32)[None],
                   torch.tensor(beta, dtype=torch.float32)[None])[0].double().numpy()
    assert np.abs(got - ref_um.reshape(n, 3) / 1000.0).max() < 1e-3  # mm
    assert m.faces.tolist() == (tri.T - 1).tolist()
    assert m.landmarks.tolist() == (keypoints - 1).tolist()
    assert m.meta["source_units"] == "micrometre"
    savemat(tmp_path / "Bad.mat", {"w": q})
    with pytest.raises(MvfError, match="mu_shape"):
        load_bfm09(tmp_path / "Bad.mat")
    (tmp_path / "Corrupt.mat").write_bytes(b"\x00garbage")
    with pytest.raises(MvfError, match="Corrupt.mat"):
        load_bfm09(tmp_path / "Corrupt.mat")


def test_decode_with_no_coefficients(model):
    verts = model.decode(torch.zeros(2, 0), torch.zeros(2, 0))
    assert verts.shape == (2, model.n_verts, 3) and torch.allclose(verts[1], model.mean)
