"""The one output writer: the same files for every reconstruction, from photos or framed crops::

    OUT/mesh.obj, mesh.mtl, mesh.png   UV-textured mesh (mm) and its texture map
    OUT/mesh.ply                       the mesh with per-vertex colours
    OUT/params.json                    id, exp, per-view poses (crop and input-photo pixels), crop
                                       transforms, images, landmark errors, exposure gains, how
                                       it was made; readable by `mvf.face.params.load_params`
    OUT/overlay_<view>.png             on the input photo: shaded mesh | landmarks (green: the
                                       view's, red: the model's) | visibility (texture blend weight)
    OUT/timing.json                    seconds per stage
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from mvf.face.mesh import vertex_normals
from mvf.face.params import FaceParams, save_params
from mvf.fileio import write_image, write_json
from mvf.io import save_mesh
from mvf.recon.crop import shrink_image
from mvf.recon.fit import scale_poses
from mvf.recon.pipeline import Reconstruction
from renderer.pictures import overlay_sheet

OVERLAY_MAX_SIDE = 1024  # overlays of larger photos are drawn at this size (longer side, px)
DETECTED_RGB = (0.1, 0.95, 0.1)
MODEL_RGB = (1.0, 0.1, 0.1)
UNITS = {"pose": "f px/mm, pitch/yaw/roll rad, tx/ty px; 'pose' in crop pixels, 'pose_full' in "
                 "the input images' pixels", "mesh": "mm", "landmark_error_px": "crop pixels"}


def params_json(rec: Reconstruction) -> FaceParams:
    """The `FaceParams` of ``params.json`` (extra keys beside id, exp and pose; the same on every path)."""
    views = rec.views
    err, per_view = rec.landmark_errors()
    extra = {
        "views": list(views.names),
        "pose_full": {v: p.tolist() for v, p in zip(views.names, rec.poses_full())},
        "crop": {v: tf.to_dict() for v, tf in zip(views.names, views.transforms)},
        "images": {v: str(p) for v, p in zip(views.names, views.paths)},
        "landmark_error_px": err, "landmark_error_per_view_px": per_view,
        "exposure_gains": {v: g.tolist() for v, g in zip(views.names, rec.texture.gains)},
        "units": UNITS, **rec.info,
    }
    pose = {v: p.detach().cpu().numpy() for v, p in zip(views.names, rec.poses)}
    return FaceParams(rec.id.detach().cpu().numpy(), rec.exp.detach().cpu().numpy(), pose, extra=extra)


def overlay(rec: Reconstruction, index: int, backend: str = "auto",
            max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """`renderer.pictures.overlay_sheet` of view ``index`` on its input photo (longer side
    shrunk to ``max_side`` if larger): ``(H', 3 W', 3)`` float in [0, 1]."""
    views, face = rec.views, rec.face
    photo = views.photos[index]
    scale = min(1.0, max_side / max(photo.shape[:2]))
    h, w = int(round(photo.shape[0] * scale)), int(round(photo.shape[1] * scale))
    base = photo if scale == 1.0 else shrink_image(photo, (w, h))
    tf = views.transforms[index]
    pose = scale_poses(tf.pose_to_full(rec.poses[index]).float(), scale)
    marks = []
    if views.landmarks is not None:
        seen = views.visible[index].cpu().numpy() > 0
        marks.append((views.photo_landmarks[index][seen] * scale, DETECTED_RGB))
    model_lm = tf.to_full(rec.landmarks[index].detach().cpu().numpy().astype(np.float64))
    marks.append((model_lm * scale, MODEL_RGB))
    camera = None if rec.fit is None else rec.fit.camera
    drawn = rec.verts if camera is None else camera.view_verts(rec.verts, pose)  # the fit's camera
    return overlay_sheet(base.astype(np.float32) / 255.0, drawn, face.faces, vertex_normals(rec.verts, face.faces),
                         pose, rec.texture.weights[index], marks, backend)


def write_outputs(rec: Reconstruction, out_dir: str | Path, backend: str = "auto",
                  timing: dict | None = None) -> list[Path]:
    """Write every file of the module docstring atomically; returns the paths written.

    ``timing``: seconds of earlier stages (e.g. detection), put first in ``timing.json`` and
    in ``rec.timing`` (which then holds every stage).
    """
    out, face = Path(out_dir), rec.face
    out.mkdir(parents=True, exist_ok=True)
    timing = rec.timing = {**(timing or {}), **rec.timing}
    t = time.perf_counter()
    save_params(out / "params.json", params_json(rec))  # first: it validates (finite, bounded) or refuses
    written: list[Path] = [out / "params.json"]
    if rec.texture.texture is not None:
        written += save_mesh(out / "mesh.obj", rec.verts, face.faces, verts_uvs=face.verts_uvs,
                             faces_uvs=face.faces_uvs, texture=rec.texture.texture)
    written += save_mesh(out / "mesh.ply", rec.verts, face.faces, colours=rec.texture.colours)
    timing["export"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        for i, view in enumerate(rec.views.names):
            write_image(out / f"overlay_{view}.png", overlay(rec, i, backend))
            written.append(out / f"overlay_{view}.png")
    timing["overlays"] = time.perf_counter() - t
    write_json(out / "timing.json", timing)
    written.append(out / "timing.json")
    return written


def print_summary(rec: Reconstruction, written: list[Path]) -> None:
    """Landmark error, a table of seconds per stage and the files written."""
    err, per_view = rec.landmark_errors()
    if err is not None:
        views = ", ".join(f"{v} {e:.2f}" for v, e in per_view.items())
        print(f"landmark reprojection error: {err:.2f} px mean ({views}; crop frame, "
              f"{rec.views.crops.shape[-1]} px)")
    rows = [(k, v) for k, v in rec.timing.items() if isinstance(v, (int, float))]
    print(f"{'stage':<20}{'seconds':>9}")
    for k, v in rows:
        print(f"{k:<20}{v:>9.2f}")
    print(f"{'total':<20}{sum(v for _, v in rows):>9.2f}")
    print("wrote " + ", ".join(str(p) for p in written))
