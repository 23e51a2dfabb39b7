"""Mesh export round trips and `mvf export` from params files and random samples."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvf.cli import main
from mvf.face.model import FaceModel
from mvf.io import load_mesh, save_mesh
from mvf.face.params import FaceParams, load_params, random_params, save_params


@pytest.fixture(scope="module")
def model():
    return FaceModel.load()


def test_obj_and_ply_round_trip(tmp_path, model):
    verts = model.decode(torch.randn(1, 100), torch.rand(1, 53) * 0.5)[0]
    colours = torch.rand(model.n_verts, 3)
    save_mesh(tmp_path / "a.obj", verts, model.faces, verts_uvs=model.verts_uvs, faces_uvs=model.faces_uvs)
    save_mesh(tmp_path / "a.ply", verts, model.faces, colours=colours)
    for name in ("a.obj", "a.ply"):
        m = load_mesh(tmp_path / name)
        assert np.abs(m.vertices - verts.numpy()).max() < 1e-4  # mm
        assert (m.faces == model.faces.numpy()).all()
    obj = load_mesh(tmp_path / "a.obj")
    assert np.abs(obj.verts_uvs - model.verts_uvs.numpy()).max() < 1e-5
    assert (obj.faces_uvs == model.faces_uvs.numpy()).all()
    ply = load_mesh(tmp_path / "a.ply")
    assert np.abs(ply.colours - colours.numpy()).max() <= 0.5 / 255 + 1e-6
    assert not list(tmp_path.glob(".*"))  # no temporaries left behind


def test_textured_obj(tmp_path, model):
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:, :32] = (200, 120, 90)
    written = save_mesh(tmp_path / "t.obj", model.mean, model.faces, verts_uvs=model.verts_uvs,
                        faces_uvs=model.faces_uvs, texture=tex)
    assert {p.suffix for p in written} == {".obj", ".mtl", ".png"}
    from pytorch3d.io import load_obj

    _, _, aux = load_obj(tmp_path / "t.obj")
    tex_back = next(iter(aux.texture_images.values())).numpy()
    assert tex_back.shape == (64, 64, 3)
    assert np.abs(tex_back * 255 - tex).max() <= 1.0


def test_params_round_trip(tmp_path, model):
    p = random_params(model, seed=5)
    p.pose = {"front": np.array([0.7, 0, 0, 0, 112, 112], np.float32)}
    p.colours = np.random.default_rng(0).uniform(size=(model.n_verts, 3)).astype(np.float32)
    save_params(tmp_path / "p.json", p)
    q = load_params(tmp_path / "p.json", model)
    assert np.allclose(q.id, p.id) and np.allclose(q.exp, p.exp) and np.allclose(q.pose["front"], p.pose["front"])
    assert np.abs(q.colours - p.colours).max() < 1e-4


def test_random_sample_statistics(model):
    ids = np.stack([random_params(model, s).id for s in range(40)])
    exps = np.stack([random_params(model, s).exp for s in range(40)])
    assert abs(ids.mean()) < 0.1 and 0.9 < ids.std() < 1.1
    assert exps.min() >= 0 and exps.max() <= 1 and (exps > 0).sum(1).max() <= 3
    assert not np.allclose(random_params(model, 1).id, random_params(model, 2).id)
    assert np.allclose(random_params(model, 1).id, random_params(model, 1).id)


def test_cli_export_random(tmp_path, model, capsys):
    out = tmp_path / "x.obj"
    assert main(["export", "--random", "--seed", "3", "--out", str(out), "--landmarks"]) == 0
    import trimesh

    mesh = trimesh.load(out, process=False, force="mesh")
    assert len(mesh.vertices) >= 9000
    width = np.ptp(mesh.vertices[:, 0])
    assert 150.0 <= width <= 200.0
    lm = np.loadtxt(tmp_path / "x_landmarks.txt")
    expected = model.landmarks_3d(random_params(model, 3).decode(model)).numpy()
    assert np.abs(lm - expected).max() < 1e-3
    # landmarks sit on mesh vertices (trimesh splits UV seams, so match by position)
    dist = np.linalg.norm(mesh.vertices[None] - lm[:, None], axis=-1).min(1)
    assert dist.max() < 1e-3
    assert np.abs(load_mesh(out).vertices[model.landmarks.numpy()] - lm).max() < 1e-3


def test_cli_export_params_ply_with_colours(tmp_path, model):
    colours = np.tile([[0.2, 0.5, 0.8]], (model.n_verts, 1))
    (tmp_path / "p.json").write_text(json.dumps({"id": [0.5] * 10, "exp": [0.0, 1.0], "colours": colours.tolist()}))
    assert main(["export", "--params", str(tmp_path / "p.json"), "--out", str(tmp_path / "p.ply")]) == 0
    m = load_mesh(tmp_path / "p.ply")
    ref = model.decode(torch.full((1, 10), 0.5), torch.tensor([[0.0, 1.0]]))[0].numpy()
    assert np.abs(m.vertices - ref).max() < 1e-4
    assert np.abs(m.colours - colours).max() < 1 / 255
