"""Real photos in, textured mesh out: landmarks, crops, fitting (or the network's start), texture, outputs.

Entry points: `prepare_views` turns photos into model-framed crops with landmarks and crop
transforms; `reconstruct_photos` fits (from the network's prediction or the mean face),
textures and writes::

    OUT/mesh.obj, mesh.mtl, mesh.png   UV-textured mesh (mm) and its texture map
    OUT/mesh.ply                       the mesh with per-vertex colours
    OUT/params.json                    id, exp; per-view poses in crop and full-photo pixels;
                                       crop transforms; landmark errors
    OUT/overlay_<view>.png             on the full photo: shaded mesh | landmarks (green detected,
                                       red fitted) | visibility (each view's texture blend weight)
    OUT/timing.json                    seconds per stage
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mvf.recon.crop import CropTransform, crop_image
from mvf.errors import MvfError
from mvf.fileio import read_image, write_image, write_json
from mvf.recon.fit import FitConfig, FitResult, fit, fitted_landmarks, scale_poses
from mvf.recon.texture import Texture, TextureConfig, save_coloured_ply, save_textured_obj, texture_from_views, uv_layout

OVERLAY_MAX_SIDE = 1024  # overlays of larger photos are drawn at this size (longer side, px)
TEXTURE_SOURCE_MAX = 1024  # colours come from crops of the photo up to this size (px)


@dataclass
class PreparedViews:
    """Views ready for the model, in slot order ``names``.

    crops ``(V, 3, S, S)`` in [0, 1]; landmarks ``(V, 68, 2)`` crop pixels; visible ``(V, 68)``;
    transforms: crop transform per view (full photo -> crop); photos: full photos
    ``(H, W, 3)`` uint8; photo_landmarks: ``(68, 2)`` full-photo pixels per view; paths: source
    image per view; cropped: False when the inputs were taken as crops already (``--no-crop``).
    """

    names: list[str]
    crops: torch.Tensor
    landmarks: torch.Tensor
    visible: torch.Tensor
    transforms: list[CropTransform]
    photos: list[np.ndarray]
    photo_landmarks: list[np.ndarray]
    paths: list[Path]
    warnings: list[str] = field(default_factory=list)
    cropped: bool = True


def prepare_views(paths: dict[str, Path], size: int = 224, landmark_files: dict[str, Path] | None = None,
                  auto_order: bool = False, crop: bool = True) -> PreparedViews:
    """Read photos, get landmarks (files take precedence over mediapipe), check the view order, crop.

    Args:
        paths: view name (front/left/right) -> image file. size: crop side (px).
        landmark_files: view name -> ``.pts``/``.npy`` file with 68 points in that photo.
        auto_order: reassign photos whose detected yaw contradicts their slot (else only warn).
        crop: cut MVF-Net-style crops (`mvf.recon.crop`); False takes square images already in the
            model's framing (resized to ``size``).
    Raises `MvfError` naming the image for unreadable images, no face or bad landmark files.
    """
    from mvf.recon.detect import LandmarkDetector, check_view_order, load_or_detect

    landmark_files = landmark_files or {}
    photos = {v: read_image(p) for v, p in paths.items()}
    need_detector = any(v not in landmark_files for v in paths)
    detector = LandmarkDetector() if need_detector else None
    try:
        lms = {v: load_or_detect(photos[v], paths[v], landmark_files.get(v), detector) for v in paths}
    finally:
        if detector is not None:
            detector.close()
    warnings: list[str] = []
    check = check_view_order({v: lm.yaw_deg for v, lm in lms.items()})
    slot_of = {v: v for v in paths}
    if check.warnings:
        warnings.extend(check.warnings)
        if check.needs_swap and auto_order:
            slot_of = {given: slot for slot, given in check.suggested.items()}
            warnings.append("--auto-order: reassigned " + ", ".join(
                f"{g} image -> {s} slot" for g, s in slot_of.items() if g != s))
        elif check.needs_swap:
            warnings.append("pass --auto-order to reassign the views")
    order = [v for v in ("front", "left", "right") if v in slot_of.values()]
    given_for = {slot: given for given, slot in slot_of.items()}
    crops, lm_crop, vis, transforms, plm = [], [], [], [], []
    for slot in order:
        given = given_for[slot]
        img, lm = photos[given], lms[given]
        if crop:
            cimg, tf = crop_image(img, lm.points, out_size=size)
        else:
            from PIL import Image

            h, w = img.shape[:2]
            if h != w:
                raise MvfError(f"{paths[given]}: uncropped inputs must be square, got {w}x{h}")
            cimg = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
            tf = CropTransform(size / w, (0.0, 0.0), size)
        crops.append(torch.from_numpy(np.array(cimg)).permute(2, 0, 1).float() / 255.0)
        lm_crop.append(torch.from_numpy(np.asarray(tf.to_crop(lm.points), np.float32)))
        vis.append(torch.from_numpy(lm.visible.astype(np.float32)))
        transforms.append(tf)
        plm.append(lm.points)
    return PreparedViews(order, torch.stack(crops), torch.stack(lm_crop), torch.stack(vis), transforms,
                         [photos[given_for[s]] for s in order], plm, [paths[given_for[s]] for s in order],
                         warnings, crop)


# ----------------------------------------------------------------------------- texture sources
def texture_sources(views: PreparedViews, poses: torch.Tensor,
                    max_size: int = TEXTURE_SOURCE_MAX) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Images to take colours from and their poses: per view, the crop box cut again from the photo
    at its native resolution (capped at ``max_size``), or the crop itself if that is not larger.

    ``poses`` ``(V, 6)`` crop px. Returns (V images ``(3, T, T)`` in [0, 1], poses ``(V, 6)``).
    """
    images, out_poses = [], []
    for i, tf in enumerate(views.transforms):
        crop = views.crops[i]
        size = crop.shape[-1]
        native = int(round(tf.out_size / tf.scale))  # the crop box's side in photo pixels
        target = min(max_size, native)
        if not views.cropped or target <= size:
            images.append(crop)
            out_poses.append(poses[i])
            continue
        big, _ = crop_image(views.photos[i], views.photo_landmarks[i], out_size=target)
        images.append(torch.from_numpy(np.array(big)).permute(2, 0, 1).float().div(255.0).to(crop.device))
        out_poses.append(scale_poses(poses[i], target / size))
    return images, torch.stack(out_poses)


# ----------------------------------------------------------------------------- overlays
def _heat(values: np.ndarray) -> np.ndarray:
    """``(...)`` values in [0, 1] -> ``(..., 3)`` RGB, dark blue -> cyan -> yellow."""
    stops = np.array([0.0, 0.5, 1.0])
    colours = np.array([[0.05, 0.05, 0.45], [0.1, 0.75, 0.85], [1.0, 0.95, 0.2]])
    t = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], -1)


def _dots(image: np.ndarray, points: np.ndarray, colour: tuple[float, float, float], radius: int) -> None:
    """Draw filled discs of ``radius`` px at ``(K, 2)`` points (image frame) into ``image`` in place."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = yy ** 2 + xx ** 2 <= radius ** 2 + 0.5
    for x, y in np.asarray(points):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        cx, cy = int(np.floor(x)), int(np.floor(y))
        ys, xs = yy[disc] + cy, xx[disc] + cx
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        image[ys[ok], xs[ok]] = colour


def _title(panel: np.ndarray, text: str) -> None:
    """Write ``text`` in the top-left corner of a float panel, in place."""
    from PIL import Image, ImageDraw

    img = Image.fromarray((np.clip(panel, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 7 * len(text) + 6, 14], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    panel[...] = np.asarray(img).astype(np.float32) / 255.0


@torch.no_grad()
def overlay_sheet(model, verts: torch.Tensor, pose_full: torch.Tensor, photo: np.ndarray,
                  detected: np.ndarray, detected_visible: np.ndarray, fitted: np.ndarray,
                  weights: torch.Tensor, backend: str = "auto",
                  max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """Three panels on the full photo (its longer side shrunk to ``max_side`` if larger).

    1. the mesh, Gouraud-shaded by a light from the camera's upper left, blended over the photo;
    2. landmarks: detected (green, visible ones) and fitted (red), full-photo pixels ``(68, 2)``;
    3. visibility: this view's texture blend weight ``weights`` ``(N,)`` per pixel (dark blue:
       not used, yellow: seen squarely), over the darkened photo.
    Returns ``(H', 3 W', 3)`` float in [0, 1].
    """
    from PIL import Image

    from renderer.rotations import euler_to_matrix
    from mvf.face.mesh import vertex_normals
    from renderer import interpolate_vertex_attr, pixel_mask, rasterize

    scale = min(1.0, max_side / max(photo.shape[:2]))
    h, w = int(round(photo.shape[0] * scale)), int(round(photo.shape[1] * scale))
    base = photo if scale == 1.0 else np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR))
    base = base.astype(np.float32) / 255.0
    pose = scale_poses(pose_full.to(verts.device).float(), scale)
    faces = model.faces
    frags = rasterize(verts[None], faces, pose[None], (h, w), backend=backend)
    mask = pixel_mask(frags)[0].cpu().numpy()
    light_cam = torch.tensor([-0.35, 0.45, 1.0], device=verts.device)
    light = torch.nn.functional.normalize(light_cam @ euler_to_matrix(pose[1:4]), dim=0)  # model space
    shade = 0.25 + 0.75 * (vertex_normals(verts, faces) @ light).clamp_min(0.0)
    attrs = torch.stack([shade, weights.to(verts.device).float()], -1)[None]  # (1, N, 2)
    pix = interpolate_vertex_attr(frags, attrs, faces)[0].cpu().numpy()  # (h, w, 2)
    alpha = 0.8 * mask[..., None]
    grey = np.repeat(0.85 * pix[..., :1], 3, -1) * np.array([1.0, 0.97, 0.93])
    shaded = base * (1.0 - alpha) + grey * alpha
    marks = base.copy()
    radius = max(1, int(round(1.2 * max(h, w) / 224)))
    _dots(marks, np.asarray(detected)[np.asarray(detected_visible, bool)] * scale, (0.1, 0.95, 0.1), radius)
    _dots(marks, np.asarray(fitted) * scale, (1.0, 0.1, 0.1), max(1, radius - 1) if radius > 1 else 1)
    vis = base * 0.35
    heat = _heat(pix[..., 1])
    vis[mask] = 0.25 * vis[mask] + 0.75 * heat[mask]
    for panel, text in ((shaded, "fitted mesh"), (marks, "landmarks: detected / fitted"),
                        (vis, "visibility (blend weight)")):
        if h >= 64 and w >= 160:
            _title(panel, text)
    return np.concatenate([shaded, marks, vis], 1)


# ----------------------------------------------------------------------------- the whole job
def reconstruct_photos(model, views: PreparedViews, out_dir: Path, fit_cfg: FitConfig,
                       init: dict | None = None, texture_cfg: TextureConfig | None = None,
                       backend: str = "auto", timing: dict | None = None, progress: bool = True) -> dict:
    """Fit (from ``init`` or the mean face), texture and write every output (module docstring).

    Args:
        model: `FaceModel`. views: from `prepare_views`. out_dir: output folder (created).
        fit_cfg: `FitConfig`. init: the network's prediction ``{"id", "exp", "pose" (V, 6) crop
            px}`` or None (mean face, poses from the landmarks).
        timing: seconds of earlier stages to include in ``timing.json`` (e.g. detection).
    Returns:
        ``{"written": [paths], "landmark_error_px": float, "landmark_error_per_view": {view: px},
        "timing": {stage: s}, "result": FitResult, "texture": Texture}``.
    """
    timing = dict(timing or {})
    cpu0 = time.process_time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    result: FitResult = fit(model, views.crops, views.landmarks, views.visible, fit_cfg, init=init,
                            backend=backend, progress=progress)
    with torch.no_grad():
        verts = model.decode(result.id[None], result.exp[None])[0]
    fitted = fitted_landmarks(model, result, fit_cfg.contour)  # (V, 68, 2) crop px
    vis = views.visible.to(fitted.device)
    dist = (fitted - views.landmarks.to(fitted.device)).norm(dim=-1)
    per_view = {v: float((dist[i] * vis[i]).sum() / vis[i].sum().clamp_min(1)) for i, v in enumerate(views.names)}
    lm_err = float((dist * vis).sum() / vis.sum().clamp_min(1))
    for phase, sec in result.seconds.items():
        timing[f"fit_{phase}"] = sec
    timing["fit_setup"] = time.perf_counter() - t - sum(result.seconds.values())  # around the phases

    t = time.perf_counter()
    tex_cfg = texture_cfg or TextureConfig()
    layout = uv_layout(model.verts_uvs, model.faces_uvs, tex_cfg.size) if model.verts_uvs is not None else None
    sources, source_poses = texture_sources(views, result.poses)
    texture: Texture = texture_from_views(verts, model.faces, result.poses, tuple(views.crops.shape[-2:]),
                                          sources, source_poses, tex_cfg, layout, backend)
    timing["texture"] = time.perf_counter() - t

    t = time.perf_counter()
    written: list[Path] = []
    if texture.texture is not None:
        written += save_textured_obj(out_dir / "mesh.obj", verts, model.faces, model.verts_uvs,
                                     model.faces_uvs, texture.texture)
    written += save_coloured_ply(out_dir / "mesh.ply", verts, model.faces, texture.colours)
    poses_full = [tf.pose_to_full(p) for tf, p in zip(views.transforms, result.poses)]
    params = {
        "id": result.id.tolist(), "exp": result.exp.tolist(),
        "pose": {v: p.tolist() for v, p in zip(views.names, result.poses)},
        "pose_full": {v: p.tolist() for v, p in zip(views.names, poses_full)},
        "crop": {v: tf.to_dict() for v, tf in zip(views.names, views.transforms)},
        "images": {v: str(p) for v, p in zip(views.names, views.paths)},
        "landmark_error_px": lm_err, "landmark_error_per_view_px": per_view,
        "exposure_gains": {v: g.tolist() for v, g in zip(views.names, texture.gains)},
        "units": {"pose": "f px/mm, pitch/yaw/roll rad, tx/ty px; 'pose' in crop pixels, "
                          "'pose_full' in full-photo pixels", "mesh": "mm",
                  "landmark_error_px": "crop pixels"},
        "fit": {"init": "network" if init is not None else "mean face + landmark poses",
                "steps": len(result.history)},
    }
    write_json(out_dir / "params.json", params)
    written.append(out_dir / "params.json")
    timing["export"] = time.perf_counter() - t

    t = time.perf_counter()
    for i, view in enumerate(views.names):
        fitted_full = views.transforms[i].to_full(fitted[i].cpu().numpy().astype(np.float64))
        sheet = overlay_sheet(model, verts, poses_full[i], views.photos[i], views.photo_landmarks[i],
                              views.visible[i].cpu().numpy() > 0, fitted_full, texture.weights[i], backend)
        write_image(out_dir / f"overlay_{view}.png", sheet)
        written.append(out_dir / f"overlay_{view}.png")
    timing["overlays"] = time.perf_counter() - t
    timing["cpu_seconds_after_detection"] = time.process_time() - cpu0
    write_json(out_dir / "timing.json", timing)
    return {"written": written, "landmark_error_px": lm_err, "landmark_error_per_view": per_view,
            "timing": timing, "result": result, "texture": texture}


def print_timing(timing: dict) -> None:
    """A small table of wall-clock seconds per stage (keys ending in ``cpu...`` are not summed)."""
    rows = [(k, v) for k, v in timing.items() if isinstance(v, (int, float)) and not k.startswith("cpu")]
    total = sum(v for _, v in rows)
    print(f"{'stage':<20}{'seconds':>9}")
    for k, v in rows:
        print(f"{k:<20}{v:>9.2f}")
    print(f"{'total':<20}{total:>9.2f}")
