"""Photos -> crops -> fit -> texture -> outputs on the full photos (`mvf.recon.views`, `.pipeline`,
`.outputs`), on a synthetic triplet enlarged 3x (a 'photo' larger than the crop) with its true
landmarks as landmark files; and the same outputs from a checkpoint on framed crops."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from renderer.camera import project
from mvf.face.model import FaceModel
from mvf.fileio import read_image
from mvf.recon.fit import FitConfig, fitted_landmarks
from mvf.recon.outputs import write_outputs
from mvf.recon.pipeline import reconstruct, texture_sources
from mvf.recon.texture import sample_images
from mvf.recon.views import detect_views

pytestmark = pytest.mark.usefixtures("one_thread")

VIEWS = ("front", "left", "right")
UP = 3  # the 'photos' are the 224 px renders enlarged 3x


@pytest.fixture(scope="module")
def photos(model, tmp_path_factory):
    """A synthetic subject's three views enlarged to 672 px, with .npy landmark files."""
    from PIL import Image

    from mvf.data.config import SynthConfig
    from mvf.data.synth import SynthGenerator
    from mvf.fileio import write_image

    gen = SynthGenerator(SynthConfig(), model, 224)
    subject = gen.render([gen.draw(21, 0)])[0]
    folder = tmp_path_factory.mktemp("photos")
    paths, lm_files = {}, {}
    for i, view in enumerate(VIEWS):
        big = np.asarray(Image.fromarray(subject.images[i]).resize((224 * UP, 224 * UP), Image.Resampling.BICUBIC))
        paths[view] = folder / f"{view}.png"
        write_image(paths[view], big)
        lm_files[view] = folder / f"{view}.npy"
        np.save(lm_files[view], subject.labels["landmarks"][i] * UP)  # continuous coordinates scale exactly
    return subject, paths, lm_files


@pytest.fixture(scope="module")
def views(photos):
    _, paths, lm_files = photos
    return detect_views(paths, 224, lm_files)


def test_texture_sources_crop_the_photo_at_its_resolution(model, photos, views):
    subject, *_ = photos
    poses = views.transforms[0].pose_to_crop(torch.from_numpy(subject.labels["pose"][0] * np.array([UP, 1, 1, 1, UP, UP])).float())
    assert views.crops.shape[-1] == 224
    images, src_poses = texture_sources(views, torch.stack([poses] * 3))
    native = views.transforms[0].out_size / views.transforms[0].scale  # crop box side in photo px
    assert images[0].shape[-1] == int(round(native)) > 224
    verts = torch.from_numpy(subject.verts)
    uv_crop = project(verts[None], poses[None])[0]
    uv_src = project(verts[None], src_poses[:1])[0]
    assert torch.allclose(uv_src, uv_crop * images[0].shape[-1] / 224, atol=1e-3)
    # both sample the same colours (the larger one is sharper), on the face's front
    front = verts[:, 2] > 60.0
    a = sample_images(views.crops[:1], uv_crop[front][None])[0]
    b = sample_images(images[:1], uv_src[front][None])[0]
    assert (a - b).abs().mean() < 0.03


def test_reconstruct_photos_writes_outputs_on_the_full_photos(model, photos, views, tmp_path):
    subject, paths, _ = photos
    rec = reconstruct(views, None, FitConfig(), face=model)
    written = write_outputs(rec, tmp_path)
    assert rec.landmark_errors()[0] < 1.0
    assert {p.name for p in written} == {p.name for p in tmp_path.iterdir()}
    params = json.loads((tmp_path / "params.json").read_text())
    for i, view in enumerate(VIEWS):
        # the full-photo pose projects the fitted landmarks where the crop pose does, mapped back
        pose_full = torch.tensor(params["pose_full"][view])
        result = rec.fit
        crop_lm = fitted_landmarks(model, result)[i]
        verts = model.decode(result.id[None], result.exp[None])
        full_lm = project(model.landmarks_3d(verts)[:, 17:], pose_full[None])[0]
        mapped = views.transforms[i].to_full(crop_lm[17:])
        assert torch.allclose(full_lm, mapped, atol=1e-2)
        # ...and lands on the photo's true landmarks (enlarged 3x: within 3 crop-px-equivalents)
        truth = torch.from_numpy(subject.labels["landmarks"][i] * UP).float()
        assert (full_lm - truth[17:]).norm(dim=-1).mean() < 3.0 * UP
        overlay = read_image(tmp_path / f"overlay_{view}.png")
        assert overlay.shape == (224 * UP, 3 * 224 * UP, 3)
    assert rec.texture.texture.shape == (512, 512, 3)
    assert (tmp_path / "mesh.png").is_file() and (tmp_path / "timing.json").is_file()
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["fit_landmarks"] > 0 and timing["overlays"] > 0
    assert set(params["crop"]) == set(VIEWS) and params["images"]["left"] == str(paths["left"])


def test_overlays_of_large_photos_are_shrunk(model, views):
    """`mvf.recon.outputs.overlay` draws on the photo shrunk to 1024 px, the mesh where the pose puts it."""
    from dataclasses import replace

    from mvf.recon.crop import CropTransform
    from mvf.recon.outputs import overlay
    from mvf.recon.pipeline import Reconstruction

    photo = np.zeros((1500, 1200, 3), np.uint8)
    verts = model.mean
    pose = torch.tensor([4.0, 0.0, 0.0, 0.0, 600.0, 700.0])
    lm = project(model.landmarks_3d(verts)[None], pose[None])[0]
    one = replace(views, names=("front",), photos=[photo], transforms=[CropTransform.identity(1500)],
                  landmarks=lm[None], visible=torch.ones(1, 68), photo_landmarks=[lm.numpy()])
    texture = type("T", (), {"weights": torch.ones(1, model.n_verts)})()
    rec = Reconstruction(one, model, torch.zeros(model.n_id), torch.zeros(model.n_exp), pose[None], verts,
                         lm[None], texture)
    sheet = overlay(rec, 0)
    assert sheet.shape == (1024, 3 * 819, 3) or sheet.shape == (1024, 3 * 820, 3)
    # the mesh is drawn where the pose puts it (scaled): the shaded panel is bright at the nose tip
    nose = project(model.landmarks_3d(verts)[30][None, None], pose[None])[0, 0].numpy() * 1024 / 1500
    assert sheet[int(nose[1]), int(nose[0])].mean() > 0.3
    assert sheet[-3, 3].mean() < 0.05  # the (black) photo stays black away from the mesh


OUTPUT_FILES = {"mesh.obj", "mesh.mtl", "mesh.png", "mesh.ply", "params.json", "timing.json",
                "overlay_front.png", "overlay_left.png", "overlay_right.png"}


def test_checkpoint_and_photo_paths_write_the_same_outputs(tiny_synth, smoke_checkpoint, photos, tmp_path):
    """A checkpoint on framed crops and full photos without one: the same files, the same
    params.json keys, readable by `mvf.face.params.load_params`."""
    from mvf.cli import main
    from mvf.face.params import load_params

    net_out, fit_out = tmp_path / "net", tmp_path / "fit"
    assert main(["reconstruct", "--checkpoint", str(smoke_checkpoint), "--images", str(tiny_synth / "000001"),
                 "--out", str(net_out)]) == 0
    _, paths, lm_files = photos
    args = ["reconstruct", "--out", str(fit_out)]
    for v in ("front", "left", "right"):
        args += [f"--{v}", str(paths[v]), f"--{v}-landmarks", str(lm_files[v])]
    assert main(args) == 0
    names = [{p.name for p in d.iterdir()} for d in (net_out, fit_out)]
    assert names[0] == names[1] == OUTPUT_FILES
    keys = [set(json.loads((d / "params.json").read_text())) for d in (net_out, fit_out)]
    assert keys[0] == keys[1] and {"id", "exp", "pose", "pose_full", "crop", "landmark_error_px"} <= keys[0]
    face = FaceModel.load()
    for d in (net_out, fit_out):
        params = load_params(d / "params.json", face)
        assert set(params.pose) == {"front", "left", "right"}
    net = json.loads((net_out / "params.json").read_text())
    assert net["init"] == "network" and net["fit_steps"] == 0 and net["landmark_error_px"] is None
    fitted = json.loads((fit_out / "params.json").read_text())
    assert fitted["checkpoint"] is None and fitted["fit_steps"] > 0 and fitted["landmark_error_px"] < 1.5


def test_reconstruct_with_a_camera_distance(photos, tmp_path):
    """--camera-distance: the fit looks through a pinhole camera, recorded in params.json, and
    still reprojects the landmarks."""
    from mvf.cli import main

    _, paths, lm_files = photos
    args = ["reconstruct", "--camera-distance", "1000", "--out", str(tmp_path / "rec")]
    for v in ("front", "left", "right"):
        args += [f"--{v}", str(paths[v]), f"--{v}-landmarks", str(lm_files[v])]
    assert main(args) == 0
    params = json.loads((tmp_path / "rec" / "params.json").read_text())
    assert params["camera_distance_mm"] == 1000.0 and params["fit_steps"] > 0
    assert params["detector_error_rank"] == 0  # 68-point landmark files have no error model
    assert params["landmark_error_px"] < 1.5


def test_checkpoint_on_photos_with_refinement(smoke_checkpoint, photos, tmp_path):
    """--crop detect --refine-steps: the network's prediction on the crops starts the fit."""
    from mvf.cli import main

    _, paths, lm_files = photos
    args = ["reconstruct", "--checkpoint", str(smoke_checkpoint), "--crop", "detect", "--refine-steps", "3",
            "--out", str(tmp_path)]
    for v in VIEWS:
        args += [f"--{v}", str(paths[v]), f"--{v}-landmarks", str(lm_files[v])]
    assert main(args) == 0
    assert {p.name for p in tmp_path.iterdir()} == OUTPUT_FILES
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["init"] == "network" and 0 < params["fit_steps"] <= 3
    assert params["checkpoint"] == str(smoke_checkpoint) and params["landmark_error_px"] is not None
    assert {"network", "fit_landmarks", "texture"} <= set(json.loads((tmp_path / "timing.json").read_text()))


def test_sideways_phone_photo_is_detected_upright(photos, tmp_path):
    """A front photo stored sideways with its EXIF orientation (as phones save portrait shots) gives
    the landmarks of the upright photo, in the upright photo's pixels."""
    from PIL import Image

    from mvf.recon.views import detect_views

    _, paths, _ = photos
    upright = read_image(paths["front"])
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    exif = sideways.getexif()
    exif[0x0112] = 6  # display: rotate 90° clockwise
    sideways.save(tmp_path / "front.jpg", exif=exif.tobytes(), quality=97)
    Image.fromarray(upright).save(tmp_path / "front_upright.jpg", quality=97)
    a = detect_views({"front": tmp_path / "front_upright.jpg"}, 224)
    b = detect_views({"front": tmp_path / "front.jpg"}, 224)
    assert b.photos[0].shape == a.photos[0].shape
    assert np.linalg.norm(b.photo_landmarks[0] - a.photo_landmarks[0], axis=-1).mean() < 1.0


def test_overlay_draws_a_pinhole_fit_through_its_camera(model, views):
    """A fit through a close pinhole camera is drawn through it: the overlay's mesh panel covers
    the pinhole image of the mesh, not its weak-perspective image."""
    from dataclasses import replace
    from types import SimpleNamespace

    from mvf.recon.crop import CropTransform
    from mvf.recon.fit import face_camera
    from mvf.recon.outputs import overlay
    from mvf.recon.pipeline import Reconstruction
    from renderer import pixel_mask, rasterize

    size = 256
    photo = np.zeros((size, size, 3), np.uint8)
    verts = model.mean
    pose = torch.tensor([0.9, 0.1, 0.6, 0.0, 128.0, 120.0])
    camera = face_camera(model, 250.0)
    lm = project(model.landmarks_3d(verts)[None], pose[None])[0]
    one = replace(views, names=("left",), photos=[photo], transforms=[CropTransform.identity(size)],
                  landmarks=lm[None], visible=torch.ones(1, 68), photo_landmarks=[lm.numpy()])
    texture = SimpleNamespace(weights=torch.ones(1, model.n_verts))
    rec = Reconstruction(one, model, torch.zeros(model.n_id), torch.zeros(model.n_exp), pose[None], verts,
                         lm[None], texture, fit=SimpleNamespace(camera=camera))
    drawn = overlay(rec, 0)[:, :size].mean(-1) > 0.02  # the mesh panel over a black photo
    masks = {name: pixel_mask(rasterize(v[None], model.faces, pose[None], (size, size)))[0].numpy()
             for name, v in (("pinhole", camera.view_verts(verts, pose)), ("weak", verts))}
    iou = {k: (drawn & m).sum() / (drawn | m).sum() for k, m in masks.items()}
    assert iou["pinhole"] > 0.97 and iou["weak"] < iou["pinhole"] - 0.05, iou
