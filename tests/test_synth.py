"""`mvf synth`: labels against independent renders, conventions, determinism, resuming."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from renderer.camera import project
from mvf.config import from_dict, load_config
from mvf.data.caps import HoleCaps
from mvf.data.config import SynthConfig
from mvf.data.format import (
    FORMAT_VERSION, LABEL_SPEC, MARKER_NAME, read_index, read_labels, subject_complete, subject_files,
    subject_verified,
)
from mvf.data.synth import generate
from mvf.errors import MvfError
from mvf.face.model import FaceModel
from mvf.fileio import read_image
from renderer.views import VIEWS

SIZE = 96


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def dataset(model, tmp_path_factory):
    """Three subjects at 96 px, without blur and sensor noise (for the photometric check)."""
    root = tmp_path_factory.mktemp("synth") / "ds"
    cfg = from_dict(SynthConfig, {"image": {"blur": [0, 0], "noise": [0, 0]}})
    generate(root, 3, seed=11, cfg=cfg, model=model, size=SIZE, batch=2, workers=2, progress=False)
    return root


def _load(root, name):
    labels = read_labels(root / name / "labels.npz")
    images = np.stack([read_image(root / name / f"{v}.png") for v in VIEWS])
    return labels, images


def _decode(model, labels):
    return model.decode(torch.from_numpy(labels["id"])[None], torch.from_numpy(labels["exp"])[None])[0]


def test_index_files_and_label_shapes(dataset, model):
    from mvf.io import load_mesh

    index = read_index(dataset)
    assert index["format_version"] == FORMAT_VERSION and index["seed"] == 11 and index["size"] == SIZE
    assert index["model"] == {"asset_id": model.asset_id, "region": model.region,
                              "n_id": model.n_id, "n_exp": model.n_exp}
    assert index["subjects"] == ["000000", "000001", "000002"]
    for name in index["subjects"]:
        assert subject_complete(dataset / name)
        labels, images = _load(dataset, name)
        assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.uint8
        shapes = {"id": (model.n_id,), "exp": (model.n_exp,), "pose": (3, 6), "landmarks": (3, 68, 2),
                  "landmark_visible": (3, 68), "masks": (3, SIZE, SIZE), "colours": (model.n_verts, 3)}
        for key, shape in shapes.items():
            assert labels[key].shape == shape, key
            assert labels[key].dtype == (np.bool_ if LABEL_SPEC[key][0] == "b" else np.float32), key
        assert ((labels["exp"] >= 0) & (labels["exp"] <= 1)).all()
        assert ((labels["colours"] >= 0) & (labels["colours"] <= 1)).all()
        mesh = load_mesh(dataset / name / "mesh.ply")
        assert np.allclose(mesh.vertices, _decode(model, labels).numpy(), atol=1e-3)
        assert (mesh.faces == model.faces.numpy()).all()
        assert np.abs(mesh.colours - labels["colours"]).max() <= 0.5 / 255 + 1e-6


def test_landmarks_are_projections_of_the_gt_mesh(dataset, model):
    projector = model.landmark_projector()
    for name in read_index(dataset)["subjects"]:
        labels, _ = _load(dataset, name)
        verts = _decode(model, labels)
        pose = torch.from_numpy(labels["pose"])
        stored = torch.from_numpy(labels["landmarks"])
        # inner points: the fixed landmark vertices, projected with the stored pose
        inner = project(verts[model.landmarks[17:]][None].expand(3, -1, -1), pose)
        assert (inner - stored[:, 17:]).norm(dim=-1).max() < 0.5
        # jawline: the contour search in each view, run again on the decoded mesh
        out = projector.project(verts[None], pose[None])
        jaw, moved = out.vertex_ids[0, :, :17, 0], out.on_silhouette[0, :, :17]
        assert torch.equal(out.uv[0], stored)  # the projector reproduces the labels exactly
        assert (jaw.numpy() == labels["jaw_vertex_ids"]).all()
        jaw_uv = torch.stack([project(verts[jaw[v]], pose[v]) for v in range(3)])
        assert (jaw_uv - stored[:, :17]).norm(dim=-1).max() < 0.5
        own = project(verts[model.landmarks[:17]][None].expand(3, -1, -1), pose)
        assert ((own - stored[:, :17]).norm(dim=-1)[~moved] < 0.5).all()
        assert moved[1:].sum() >= 4  # side views: the far jaw follows the outline


def _silhouette_edges(fragments, depth_jump_mm: float = 6.0) -> list[torch.Tensor]:
    """Per view, midpoints (px) of pixel pairs across a mask edge or a depth jump."""
    p2f, zbuf = fragments.pix_to_face[..., 0], fragments.zbuf[..., 0]
    z = torch.where(p2f >= 0, zbuf, torch.full_like(zbuf, 1e6))
    out = []
    for zi in z:
        jh = (zi[:, 1:] - zi[:, :-1]).abs() > depth_jump_mm
        jv = (zi[1:] - zi[:-1]).abs() > depth_jump_mm
        yh, xh = torch.nonzero(jh, as_tuple=True)
        yv, xv = torch.nonzero(jv, as_tuple=True)
        out.append(torch.cat([torch.stack([xh + 1.0, yh + 0.5], -1), torch.stack([xv + 0.5, yv + 1.0], -1)]))
    return out


def test_jawline_lies_on_the_rendered_silhouette(dataset, model):
    from renderer import rasterize

    checked = 0
    for name in read_index(dataset)["subjects"]:
        labels, _ = _load(dataset, name)
        verts = _decode(model, labels)
        pose = torch.from_numpy(labels["pose"])
        fr = rasterize(verts[None].expand(3, -1, -1), model.faces, pose, (SIZE, SIZE))
        edges = _silhouette_edges(fr)
        lm = torch.from_numpy(labels["landmarks"])
        use = labels["jaw_on_silhouette"] & labels["landmark_visible"][:, :17]
        for v in range(3):
            pts = lm[v, :17][torch.from_numpy(use[v])]
            if len(pts):
                dist = torch.cdist(pts, edges[v]).min(1).values
                assert dist.max() < 1.5, (name, VIEWS[v], dist)
                checked += len(pts)
    assert checked >= 12


def test_masks_are_the_meshes_rasterized_coverage(dataset, model):
    from renderer import rasterize

    from mvf.face.mesh import vertex_normals

    caps = HoleCaps.from_model(model)
    faces_all = torch.cat([model.faces, caps.faces])
    nf = model.faces.shape[0]
    for name in read_index(dataset)["subjects"]:
        labels, _ = _load(dataset, name)
        verts = _decode(model, labels)[None]
        pose = torch.from_numpy(labels["pose"])
        masks = torch.from_numpy(labels["masks"])
        coverage = rasterize(verts.expand(3, -1, -1), model.faces, pose, (SIZE, SIZE)).pix_to_face[..., 0] >= 0
        scene_v = torch.cat([verts, caps.vertices(verts, vertex_normals(verts, model.faces))], 1)
        p2f = rasterize(scene_v.expand(3, -1, -1), faces_all, pose, (SIZE, SIZE)).pix_to_face[..., 0]
        local = p2f % faces_all.shape[0]
        assert torch.equal(masks, (p2f >= 0) & (local < nf))
        assert not (masks & ~coverage).any()
        # the mesh covers more only where an eye or mouth filler sits in front of it
        assert not ((coverage & ~masks) & ~((p2f >= 0) & (local >= nf))).any()
        assert masks.float().mean() > 0.2
        # landmark visibility agrees with the renderer's vertex visibility on the same scene
        from renderer import vertex_visibility

        fr = rasterize(scene_v.expand(3, -1, -1), faces_all, pose, (SIZE, SIZE))
        vis = vertex_visibility(scene_v.expand(3, -1, -1), faces_all, pose, fr)
        ids = torch.cat([torch.from_numpy(labels["jaw_vertex_ids"]).long(),
                         model.landmarks[17:].expand(3, -1)], 1)
        ref = torch.gather(vis, 1, ids)
        own = ~torch.cat([torch.from_numpy(labels["jaw_on_silhouette"]), torch.zeros(3, 51, dtype=torch.bool)], 1)
        assert torch.equal(torch.from_numpy(labels["landmark_visible"])[own], ref[own])


def test_views_follow_the_conventions(dataset):
    for name in read_index(dataset)["subjects"]:
        labels, _ = _load(dataset, name)
        yaw = np.degrees(labels["pose"][:, 2])
        assert abs(yaw[0]) <= 10 and -60 <= yaw[1] <= -20 and 20 <= yaw[2] <= 60
        lm = labels["landmarks"]
        nose, eye_r, eye_l = lm[:, 30, 0], lm[:, 36, 0], lm[:, 45, 0]  # 36: subject's right eye corner
        centre = (lm[:, :, 0].min(1) + lm[:, :, 0].max(1)) / 2
        # left view shows the subject's left cheek: the nose points to the image's left and the
        # subject's left eye corner (45) is the one far from the nose
        assert nose[1] < centre[1] and abs(eye_l[1] - nose[1]) > abs(eye_r[1] - nose[1])
        assert nose[2] > centre[2] and abs(eye_r[2] - nose[2]) > abs(eye_l[2] - nose[2])
        # the far jaw (subject's right in the left view) follows the outline, the near one stays
        sil, vis = labels["jaw_on_silhouette"], labels["landmark_visible"]
        assert sil[1, :8].any() and not sil[1, 9:].any() and sil[2, 9:].any() and not sil[2, :8].any()
        assert vis[1, 9:17].mean() > 0.7 and vis[2, 0:8].mean() > 0.7
        # in every view the subject's right side (points 0-7, 36) is on the image's left
        assert (eye_r < eye_l).all() and (lm[:, 0, 0] < lm[:, 16, 0]).all()
        # framing: the landmark box fills 40-80 % of the image and stays inside it
        side = (lm.max(1) - lm.min(1)).max(-1) / SIZE
        assert ((side >= 0.4) & (side <= 0.8)).all()
        assert (lm.min() >= 0) and (lm.max() <= SIZE)


def test_views_agree_photometrically(dataset, model):
    """Warping one view into another with the GT mesh and poses reproduces it (co-visible pixels)."""
    from renderer import cross_view_warp

    errs = []
    for name in read_index(dataset)["subjects"]:
        labels, images = _load(dataset, name)
        verts = _decode(model, labels)[None]
        imgs = torch.from_numpy(images).permute(0, 3, 1, 2)[None].float() / 255
        pose = torch.from_numpy(labels["pose"])[None]
        warped, valid = cross_view_warp(imgs, verts, model.faces, pose)
        target = imgs[:, [b for _, b in ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))]]
        diff = ((warped - target).abs().mean(2, keepdim=True) * valid).sum() / valid.sum()
        assert valid.sum() > 1000
        errs.append(float(diff))
    assert max(errs) < 0.02, errs


def test_deterministic_subsets_and_resume(model, tmp_path):
    cfg = from_dict(SynthConfig, {"background": {"solid": 0, "gradient": 0, "noise": 0, "face": 1}})
    kw = dict(cfg=cfg, model=model, size=48, progress=False)
    generate(tmp_path / "a", 2, seed=7, batch=2, workers=2, **kw)
    generate(tmp_path / "b", 2, seed=7, batch=1, workers=0, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * 6  # index; 3 PNGs, mesh, labels, done.json per subject
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # a subset made alone reproduces the same subject
    generate(tmp_path / "c", 2, seed=7, batch=1, subjects=[1], **kw)
    assert read_index(tmp_path / "c")["subjects"] == ["000001"]
    for f in ("front.png", "left.png", "right.png", "labels.npz", "mesh.ply"):
        assert (tmp_path / "c/000001" / f).read_bytes() == (tmp_path / "a/000001" / f).read_bytes()
    # another seed gives other subjects
    generate(tmp_path / "d", 1, seed=8, batch=1, **kw)
    la, ld = read_labels(tmp_path / "a/000000/labels.npz"), read_labels(tmp_path / "d/000000/labels.npz")
    assert not np.allclose(la["id"], ld["id"])
    assert (tmp_path / "a/000000/front.png").read_bytes() != (tmp_path / "d/000000/front.png").read_bytes()
    # resume: only incomplete subjects are redone, identically
    (tmp_path / "a/000000/labels.npz").unlink()
    kept = (tmp_path / "a/000001/front.png").stat().st_mtime_ns
    stats = generate(tmp_path / "a", 2, seed=7, batch=2, **kw)
    assert (stats.made, stats.skipped) == (1, 1)
    assert (tmp_path / "a/000001/front.png").stat().st_mtime_ns == kept
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not [p for p in (tmp_path / "a").rglob("*") if ".tmp" in p.name]  # no leftover temporaries


def test_damaged_subjects_are_made_again(model, tmp_path):
    """A subject is done only when its files match the checksums in its ``done.json``, written
    last: a truncated front.png (in the index, marker present), a flipped byte, a missing marker
    over a truncated file (a subject of an older version) are each made again, byte-identical to
    an uninterrupted run; a marker-less subject whose files decode is kept as it is."""
    cfg = from_dict(SynthConfig, {"background": {"face": 0}})  # no distractor pool to render
    kw = dict(cfg=cfg, model=model, size=32, batch=4, workers=0, progress=False)
    ref, out = tmp_path / "ref", tmp_path / "out"
    generate(ref, 4, seed=3, **kw)
    generate(out, 4, seed=3, **kw)
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    sub = [out / f"00000{i}" for i in range(4)]
    assert all(subject_verified(d) for d in sub)
    front = (sub[0] / "front.png").read_bytes()
    (sub[0] / "front.png").write_bytes(front[: len(front) // 2])  # killed mid-copy, say
    mesh = bytearray((sub[1] / "mesh.ply").read_bytes())
    mesh[-5] ^= 0xFF  # same size, one byte off
    (sub[1] / "mesh.ply").write_bytes(bytes(mesh))
    (sub[2] / MARKER_NAME).unlink()  # older version, damaged: must be decoded to be caught
    left = (sub[2] / "left.png").read_bytes()
    (sub[2] / "left.png").write_bytes(left[: len(left) - 40])
    (sub[3] / MARKER_NAME).unlink()  # older version, intact: kept
    kept = {p.name: p.stat().st_mtime_ns for p in subject_files(sub[3])}
    # what a kill during atomic writes leaves (mkstemp names), cleaned when the folder is written
    orphans = [sub[0] / ".left.k2j4x9q_.tmp.png", out / ".index.a1b2c3d4.tmp.json"]
    for p in orphans:
        p.write_bytes(b"partial")
    assert [subject_verified(d) for d in sub] == [False, False, False, True]
    assert all(subject_complete(d) for d in sub)  # what readers check: files exist
    stats = generate(out, 4, seed=3, **kw)
    assert (stats.made, stats.skipped) == (3, 1)
    assert {p.name: p.stat().st_mtime_ns for p in subject_files(sub[3])} == kept
    assert not (sub[3] / MARKER_NAME).exists()
    left = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert left == [rel for rel in files if rel != sub[3].relative_to(out) / MARKER_NAME]
    for rel in files:
        if rel != sub[3].relative_to(out) / MARKER_NAME:
            assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert read_index(out)["subjects"] == read_index(ref)["subjects"]
    marker = json.loads((ref / "000000" / MARKER_NAME).read_text())
    assert sorted(marker["sha256"]) == sorted(p.name for p in subject_files(ref / "000000"))


def test_bad_runs_are_refused(model, tmp_path):
    cfg = SynthConfig()
    generate(tmp_path / "a", 0, seed=1, cfg=cfg, model=model, size=64, progress=False)
    with pytest.raises(MvfError, match="different 'seed'"):
        generate(tmp_path / "a", 1, seed=2, cfg=cfg, model=model, size=64, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(MvfError, match="not a synthetic dataset"):
        generate(tmp_path / "other", 1, seed=1, cfg=cfg, model=model, size=64, progress=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("views:\n  side_yaw: [60, 20]\n")
    with pytest.raises(MvfError, match="side_yaw"):
        load_config(bad, SynthConfig)
    bad.write_text("views:\n  sideyaw: [20, 60]\n")
    with pytest.raises(MvfError, match="unknown config key 'views.sideyaw'"):
        load_config(bad, SynthConfig)


def test_cli(tmp_path, capsys):
    from mvf.cli import main

    assert main(["synth", "--out", str(tmp_path / "x"), "--subjects", "1", "--size", "48", "--quiet",
                 "--set", "background.face=0"]) == 0
    assert "wrote 1 subjects" in capsys.readouterr().out
    assert json.loads((tmp_path / "x" / "index.json").read_text())["generator"]["background"]["face"] == 0
    assert main(["synth", "--out", str(tmp_path / "y"), "--subjects", "1", "--set", "views.fill=[0.9,0.1]"]) == 2
    assert "views.fill" in capsys.readouterr().err
    for n in ("0", "-3"):  # an empty dataset is refused, and nothing is written
        assert main(["synth", "--out", str(tmp_path / "z"), "--subjects", n]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"mvf synth: error: --subjects {n}: must be at least 1"
    assert not (tmp_path / "z").exists() and not (tmp_path / "y").exists()


def test_shifted_config_loads_and_differs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    base = load_config(root / "configs/synth.yaml", SynthConfig)
    assert base == SynthConfig()  # the config file documents the defaults
    shifted = load_config(root / "configs/synth_shifted.yaml", SynthConfig)
    assert shifted.views.side_yaw[1] > base.views.side_yaw[1] and shifted != base
    assert math.isfinite(shifted.lighting.intensity[1])


def test_pinhole_camera_option(model, tmp_path):
    """``views.camera_distance_mm``: the same subjects (draws, poses) seen by a pinhole camera; the
    stored landmarks are the pinhole projections of the landmark points, the images change."""
    from renderer.camera import perspective_prewarp, rotate

    weak, near = tmp_path / "weak", tmp_path / "near"
    base = {"image": {"blur": [0, 0], "noise": [0, 0]}}
    generate(weak, 2, seed=5, cfg=from_dict(SynthConfig, base), model=model, size=SIZE, workers=0, progress=False)
    cfg = from_dict(SynthConfig, {**base, "views": {"camera_distance_mm": [400.0, 400.0]}})
    generate(near, 2, seed=5, cfg=cfg, model=model, size=SIZE, workers=0, progress=False)
    for name in read_index(near)["subjects"]:
        lw, iw = _load(weak, name)
        ln, im = _load(near, name)
        assert "camera_distance_mm" not in lw and float(ln["camera_distance_mm"]) == 400.0
        for key in ("id", "exp", "pose", "jaw_vertex_ids"):
            assert np.array_equal(lw[key], ln[key]), key  # the other draws are unchanged
        verts = _decode(model, ln)
        pose = torch.from_numpy(ln["pose"])
        ids = torch.cat([torch.from_numpy(ln["jaw_vertex_ids"]).long(),
                         model.landmarks[17:][None].expand(3, -1)], 1)  # (3, 68)
        pts = verts[ids]  # (3, 68, 3)
        ref = rotate(pts, pose)[..., 2].mean(1)
        pinhole = project(perspective_prewarp(pts, pose, 400.0, ref), pose)
        stored = torch.from_numpy(ln["landmarks"])
        assert (pinhole - stored).norm(dim=-1).max() < 0.05
        assert (stored - torch.from_numpy(lw["landmarks"])).norm(dim=-1).max() > 0.5
        assert np.abs(im.astype(float) - iw).mean() > 1.0
    with pytest.raises(MvfError, match="camera_distance_mm"):
        from_dict(SynthConfig, {"views": {"camera_distance_mm": [50.0, 60.0]}})


def test_lights_fixed_to_the_camera(model, tmp_path):
    """``lighting.frame: camera``: each view is lit from the same camera-space directions, so a
    vertex's shade is ``ambient + colour · max(0, (R n) · d)`` with the view's rotation R, the
    views no longer agree photometrically, and the draws and poses are those of the default."""
    from renderer import cross_view_warp
    from mvf.data.sampling import sample_subject
    from mvf.data.synth import SynthGenerator
    from mvf.face.mesh import vertex_normals
    from renderer.rotations import euler_to_matrix

    cfg = from_dict(SynthConfig, {"image": {"blur": [0, 0], "noise": [0, 0]}, "lighting": {"frame": "camera"}})
    gen = SynthGenerator(cfg, model, size=SIZE)
    draw = sample_subject(5, 0, cfg, model.n_id, gen.exp_names, gen.fields)
    verts = gen._decode([draw])
    normals = vertex_normals(verts, model.faces)
    poses = torch.zeros(3, 6)
    poses[:, 0] = 1.0
    poses[:, 2] = torch.tensor([0.0, -0.6, 0.7])  # yaw, rad
    _, colours = gen._scene(verts, normals, [draw], poses)
    n_model = verts.shape[1]
    assert colours.shape == (1, 3, colours.shape[2], 3)
    albedo = torch.as_tensor(draw.albedo.colours, dtype=colours.dtype)
    dirs = torch.nn.functional.normalize(torch.as_tensor(draw.lighting.directions, dtype=colours.dtype), dim=-1)
    for v in range(3):
        n_view = normals[0] @ euler_to_matrix(poses[v, 1:4]).T  # (N, 3) normals in the view's frame
        shade = torch.as_tensor(draw.lighting.ambient, dtype=colours.dtype) + \
            (n_view @ dirs.T).clamp(min=0) @ torch.as_tensor(draw.lighting.colours, dtype=colours.dtype)
        assert torch.allclose(colours[0, v, :n_model], albedo * shade, atol=1e-5)

    roots = {}
    for frame in ("model", "camera"):
        roots[frame] = tmp_path / frame
        c = from_dict(SynthConfig, {"image": {"blur": [0, 0], "noise": [0, 0]}, "lighting": {"frame": frame}})
        generate(roots[frame], 2, seed=5, cfg=c, model=model, size=SIZE, workers=0, progress=False)
    errs = {}
    for frame, root in roots.items():
        errs[frame] = []
        for name in read_index(root)["subjects"]:
            labels, images = _load(root, name)
            imgs = torch.from_numpy(images).permute(0, 3, 1, 2)[None].float() / 255
            warped, valid = cross_view_warp(imgs, _decode(model, labels)[None], model.faces,
                                            torch.from_numpy(labels["pose"])[None])
            target = imgs[:, [b for _, b in ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))]]
            errs[frame].append(float(((warped - target).abs().mean(2, keepdim=True) * valid).sum() / valid.sum()))
    for name in read_index(roots["camera"])["subjects"]:
        lm, lc = _load(roots["model"], name)[0], _load(roots["camera"], name)[0]
        for key in ("id", "exp", "pose", "landmarks"):
            assert np.array_equal(lm[key], lc[key]), key
    assert max(errs["model"]) < 0.02 and min(errs["camera"]) > 2 * max(errs["model"]), errs
    with pytest.raises(MvfError, match="lighting.frame"):
        from_dict(SynthConfig, {"lighting": {"frame": "world"}})
