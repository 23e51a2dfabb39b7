"""Texture from views: known albedo rendered into three views comes back as colours and UV map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from renderer.camera import make_pose
from mvf.face.model import FaceModel
from mvf.face.mesh import fill_vertex_holes, vertex_normals
from mvf.io import load_mesh, save_mesh
from mvf.recon.texture import TextureConfig, push_pull_fill, uv_texture, vertex_colours
from renderer import Lights, render

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    model = FaceModel.load()
    verts = model.mean
    # smooth albedo varying over the face, in [0.2, 0.8]
    p = (verts - verts.mean(0)) / 60.0
    albedo = 0.5 + 0.3 * torch.stack([torch.sin(2 * p[:, 0]), torch.cos(2 * p[:, 1]), torch.sin(p[:, 0] + p[:, 1])], -1)
    poses = torch.stack([make_pose(0.55, 0, 0, 0, 64, 58), make_pose(0.55, 0, -35, 0, 64, 58),
                         make_pose(0.55, 0, 35, 0, 64, 58)])
    flat = Lights(ambient=(1.0, 1.0, 1.0), directional=[])  # unshaded: image colour == albedo
    rgba = render(verts[None].expand(3, -1, -1), model.faces, albedo[None].expand(3, -1, -1), poses, (128, 128),
                  lights=flat, background=(0.0, 0.0, 0.0))
    images = rgba[..., :3].permute(0, 3, 1, 2)
    return model, verts, albedo, poses, images


def test_normals_point_out_of_the_face(scene):
    model, verts, *_ = scene
    n = vertex_normals(verts, model.faces)
    nose = int(model.landmarks[30])
    assert n[nose, 2] > 0.8
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-4)


def test_vertex_colours_recover_albedo(scene):
    model, verts, albedo, poses, images = scene
    colours, seen = vertex_colours(verts, model.faces, images, poses)
    assert seen.float().mean() > 0.6
    err = (colours[seen] - albedo[seen]).abs()
    assert err.mean() < 0.02
    assert torch.quantile(err.max(-1).values, 0.9) < 0.05
    # unseen vertices are filled with plausible colours (inside the albedo range)
    assert (colours >= 0.0).all() and (colours <= 1.0).all()


def test_uv_texture_recovers_albedo(scene, tmp_path):
    model, verts, albedo, poses, images = scene
    tex, seen = uv_texture(verts, model.faces, model.verts_uvs, model.faces_uvs, images, poses,
                           TextureConfig(size=256))
    assert tex.shape == (256, 256, 3) and seen.any()
    # sample the texture at each vertex's UV and compare with the albedo where seen
    uvs = model.verts_uvs[model.faces_uvs.reshape(-1)]
    vid = model.faces.reshape(-1)
    col = (uvs[:, 0] * 256).long().clamp(0, 255)
    row = ((1 - uvs[:, 1]) * 256).long().clamp(0, 255)
    got = tex[row, col]
    _, vseen = vertex_colours(verts, model.faces, images, poses)
    ok = vseen[vid] & seen[row, col]
    assert ok.float().mean() > 0.5
    assert (got[ok] - albedo[vid][ok]).abs().mean() < 0.04
    # textured OBJ export round trip
    save_mesh(tmp_path / "face.obj", verts, model.faces, verts_uvs=model.verts_uvs,
              faces_uvs=model.faces_uvs, texture=tex.numpy())
    back = load_mesh(tmp_path / "face.obj")
    assert np.abs(back.vertices - verts.numpy()).max() < 1e-4
    from pytorch3d.io import load_obj

    _, _, aux = load_obj(tmp_path / "face.obj")
    tex_back = next(iter(aux.texture_images.values()))
    assert (tex_back - tex).abs().max() <= 1.0 / 255 + 1e-6


def test_hole_filling():
    img = torch.zeros(3, 16, 16)
    img[:, :, :8] = 0.8
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1
    filled = push_pull_fill(img, mask)
    assert torch.allclose(filled[:, :, :8], img[:, :, :8])
    assert (filled[:, :, 8:] - 0.8).abs().max() < 1e-4  # the only colour around spreads
    faces = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    vals = torch.tensor([[1.0], [0.0], [0.0], [0.0], [0.0]])
    out = fill_vertex_holes(vals, torch.tensor([True, False, False, False, False]), faces)
    assert torch.allclose(out, torch.ones(5, 1))


def test_exposure_matching_removes_per_view_gains(scene):
    """Side views 30 % brighter / 20 % darker (per channel differently) blend back to the front
    view's colours when exposure matching is on, and leave a clear error when it is off."""
    model, verts, albedo, poses, images = scene
    gains = torch.tensor([[1.0, 1.0, 1.0], [1.3, 1.2, 1.35], [0.8, 0.85, 0.75]])
    exposed = (images * gains[:, :, None, None]).clamp(0, 1)
    from mvf.recon.texture import texture_from_views

    on = texture_from_views(verts, model.faces, poses, (128, 128), exposed, cfg=TextureConfig())
    off = texture_from_views(verts, model.faces, poses, (128, 128), exposed, cfg=TextureConfig(match_exposure=False))
    assert torch.allclose(on.gains, 1.0 / gains, rtol=0.03)
    seen = on.seen
    err_on = (on.colours[seen] - albedo[seen]).abs().mean()
    err_off = (off.colours[seen] - albedo[seen]).abs().mean()
    assert err_on < 0.02 < 2 * err_on < err_off


def test_fast_exporters_round_trip(scene, tmp_path):
    """`save_mesh` (textured OBJ, coloured PLY) reads back through PyTorch3D and trimesh."""
    from pytorch3d.io import load_obj

    model, verts, albedo, *_ = scene
    tex = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))
    written = save_mesh(tmp_path / "face.obj", verts, model.faces, verts_uvs=model.verts_uvs, faces_uvs=model.faces_uvs,
                        texture=tex)
    assert [p.name for p in written] == ["face.obj", "face.mtl", "face.png"]
    v, f, aux = load_obj(tmp_path / "face.obj")
    assert (v - verts).abs().max() < 1e-4 and torch.equal(f.verts_idx, model.faces)
    assert (aux.verts_uvs - model.verts_uvs).abs().max() < 1e-6 and torch.equal(f.textures_idx, model.faces_uvs)
    assert (next(iter(aux.texture_images.values())) - tex).abs().max() <= 0.5 / 255 + 1e-6
    save_mesh(tmp_path / "face.ply", verts, model.faces, colours=albedo)
    back = load_mesh(tmp_path / "face.ply")
    assert np.abs(back.vertices - verts.numpy()).max() < 1e-4 and np.array_equal(back.faces, model.faces.numpy())
    assert np.abs(back.colours - albedo.numpy()).max() <= 0.5 / 255 + 1e-6


def test_turntable_renders_a_textured_obj(scene, tmp_path):
    """tools/turntable.py draws N views of a textured OBJ side by side, texture sampled per pixel."""
    import importlib.util
    import sys
    from pathlib import Path

    from mvf.fileio import read_image
    model, verts, *_ = scene
    red = torch.zeros(32, 32, 3)
    red[..., 0] = 1.0
    save_mesh(tmp_path / "face.obj", verts, model.faces, verts_uvs=model.verts_uvs, faces_uvs=model.faces_uvs, texture=red)
    spec = importlib.util.spec_from_file_location(
        "turntable", Path(__file__).resolve().parents[1] / "tools" / "turntable.py")
    turntable = importlib.util.module_from_spec(spec)
    sys.modules["turntable"] = turntable  # dataclasses look their module up there
    spec.loader.exec_module(turntable)
    assert turntable.main(["--mesh", str(tmp_path / "face.obj"), "--out", str(tmp_path / "t.png"),
                           "--views", "3", "--size", "64", "--shading", "0", "--no-caps"]) == 0
    sheet = read_image(tmp_path / "t.png")
    assert sheet.shape == (64, 192, 3)
    centre = sheet[32, 32 + 64]  # the middle view (yaw 0) looks at the face: texture colour
    assert centre[0] > 240 and centre[1] < 15 and centre[2] < 15
    assert (sheet[0, 0] == 255).all()  # white background


def test_texture_through_a_pinhole_camera(scene):
    """Views of a 300 mm camera (pre-warped meshes, `Pinhole`): texturing through the same camera
    recovers a fine albedo, the weak-perspective texture smears it."""
    from renderer.camera import Pinhole, view_meshes
    from mvf.recon.texture import texture_from_views

    model, verts, _, poses, _ = scene
    p = (verts - verts.mean(0)) / 8.0
    albedo = 0.5 + 0.3 * torch.stack([torch.sin(p[:, 0]), torch.cos(p[:, 1]), torch.sin(p[:, 0] + p[:, 1])], -1)
    camera = Pinhole(300.0, (0.0, 0.0, 40.0))
    flat = Lights(ambient=(1.0, 1.0, 1.0), directional=[])
    rgba = render(view_meshes(verts, poses, camera), model.faces, albedo[None].expand(3, -1, -1), poses,
                  (128, 128), lights=flat, background=(0.0, 0.0, 0.0))
    images = rgba[..., :3].permute(0, 3, 1, 2)
    errors = {}
    for name, cam in (("pinhole", camera), ("weak", None)):
        tex = texture_from_views(verts, model.faces, poses, (128, 128), images, camera=cam)
        errors[name] = float((tex.colours[tex.seen] - albedo[tex.seen]).abs().mean())
    assert errors["pinhole"] < 0.03 and errors["pinhole"] < 0.5 * errors["weak"], errors
