"""Input views: which files (the one argument-to-path rule), read, framed or detected and cropped.

`gather_views` maps ``--front/--left/--right`` or ``--images DIR`` to one image per view;
`framed_views` takes square images already in the model's framing (no detection);
`detect_views` reads photos, finds 68 landmarks (landmark files take precedence over
mediapipe), checks the view order and cuts MVF-Net-style crops. Both return `Views`: crops
``(V, 3, S, S)`` in [0, 1] with the crop transform of every view, what `mvf.recon.pipeline`
takes.

Checks on every path: an image smaller than `MIN_IMAGE_SIDE` px is refused; two views that are
the same picture or nearly so (mean absolute difference of `SAME_VIEW_SIZE` px grey thumbnails
below `SAME_VIEW_MAD` grey levels of 255) give a warning; landmark files are read before any
detection runs. Framed inputs larger than `FRAMED_MAX_SIDE` are shrunk once on reading, so no
stage works at the photo's full size.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as tnf
from torch import Tensor

from mvf.errors import MvfError, file_error
from mvf.fileio import find_view_image, read_image
from mvf.recon.crop import CropTransform, crop_image, shrink_image
from mvf.recon.detect import LandmarkDetector, check_view_order, load_or_detect, read_face_landmarks
from renderer.views import VIEWS

MIN_IMAGE_SIDE = 32  # px: smaller images hold no usable face
FRAMED_MAX_SIDE = 1024  # px: framed inputs are shrunk to at most this on reading
SAME_VIEW_SIZE = 64  # px: side of the grey thumbnails compared by `same_view_warnings`
SAME_VIEW_MAD = 2.0  # grey levels (of 255): mean abs difference below this = the same picture


@dataclass
class Views:
    """One subject's views in slot order ``names`` (a subsequence of front, left, right).

    crops ``(V, 3, S, S)`` in [0, 1]; transforms: per view, input photo px -> crop px;
    photos: the input images ``(H, W, 3)`` uint8; paths: their files. With landmarks (detected
    or from files): landmarks ``(V, 68, 2)`` crop px, visible ``(V, 68)`` and photo_landmarks
    ``(68, 2)`` photo px per view; None for framed inputs. cropped: crops were cut around the
    landmarks (False: the inputs are the crops, resized at most). detector_points: the
    detector's raw points ``(V, 478, 2)`` crop px, for the calibrated landmark set
    (`mvf.recon.calibrate`); None when any view's landmarks came from a file.
    """

    names: tuple[str, ...]
    crops: Tensor
    transforms: list[CropTransform]
    photos: list[np.ndarray]
    paths: list[Path]
    landmarks: Tensor | None = None
    visible: Tensor | None = None
    photo_landmarks: list[np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)
    cropped: bool = False
    detector_points: Tensor | None = None


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    """--front/--left/--right or --images DIR, per-view landmark files and --auto-order."""
    for v in VIEWS:
        p.add_argument(f"--{v}", metavar="IMG", help=f"{v} image (left/right: the subject's left/right cheek)")
    p.add_argument("--images", metavar="DIR", help="folder with front/left/right.<png|jpg>")
    for v in VIEWS:
        p.add_argument(f"--{v}-landmarks", metavar="FILE",
                       help=f"68-point landmarks for the {v} image (.pts or .npy); overrides detection")
    p.add_argument("--auto-order", action="store_true",
                   help="reassign photos whose detected yaw contradicts their slot")


def gather_views(front: str | None = None, left: str | None = None, right: str | None = None,
                 images_dir: str | None = None) -> dict[str, Path]:
    """View name -> image path, from ``--front/--left/--right`` or an ``--images`` folder (the views
    it holds). `MvfError` when both or neither are given, or the folder has no view image."""
    given = {v: p for v, p in zip(VIEWS, (front, left, right)) if p}
    if images_dir and given:
        raise MvfError("give either --images DIR or --front/--left/--right, not both")
    if images_dir:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise file_error(folder, "image folder not found")
        found = {v: find_view_image(folder, v, missing_ok=True) for v in VIEWS}
        found = {v: p for v, p in found.items() if p is not None}
        if not found:
            raise file_error(folder, "no front/left/right images (front.png, left.png, right.png)")
        return found
    if not given:
        raise MvfError("no input images: give --front F [--left L --right R] or --images DIR")
    return {v: Path(p) for v, p in given.items()}


def views_from_args(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Path]]:
    """Image and landmark-file paths per view from arguments added by `add_view_arguments`."""
    paths = gather_views(args.front, args.left, args.right, args.images)
    lms = {v: Path(getattr(args, f"{v}_landmarks")) for v in VIEWS if getattr(args, f"{v}_landmarks")}
    return paths, lms


def read_view_image(path: str | Path) -> np.ndarray:
    """`mvf.fileio.read_image`, refusing images under `MIN_IMAGE_SIDE` px on a side."""
    img = read_image(path)
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise file_error(path, f"image is {w}x{h} px: too small for a face (at least "
                               f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})")
    return img


def same_view_warnings(names: tuple[str, ...] | list[str], photos: list[np.ndarray],
                       paths: list[Path]) -> list[str]:
    """One warning per pair of views that are the same picture or nearly so (see module docstring)."""
    thumbs = [np.asarray(Image.fromarray(shrink_image(p, (SAME_VIEW_SIZE, SAME_VIEW_SIZE))).convert("L"), np.float32)
              for p in photos]
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            mad = float(np.abs(thumbs[i] - thumbs[j]).mean())
            if mad < SAME_VIEW_MAD:
                out.append(f"{paths[j]}: the {names[j]} view is the same image as the {names[i]} view "
                           f"({paths[i]}; mean difference {mad:.2f}/255): give one photo per view")
    return out


def _to_tensor(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255.0)


def framed_views(paths: dict[str, Path], size: int | None = None) -> Views:
    """Square images already in the model's framing; resized to ``size`` px if given (else kept,
    at most `FRAMED_MAX_SIDE`).

    `MvfError` naming the file for unreadable, tiny or non-square images.
    """
    names = tuple(v for v in VIEWS if v in paths)
    crops, transforms, photos, shrunk = [], [], [], []
    for v in names:
        img = read_view_image(paths[v])
        h, w = img.shape[:2]
        if h != w:
            raise file_error(paths[v], f"image is {w}x{h}: expected a square crop in the training framing")
        s = size or min(w, FRAMED_MAX_SIDE)
        if s < w:  # shrink in uint8 (antialiased, as torch's antialias=True), not a float copy of the photo
            small = shrink_image(img, (s, s))
            t = _to_tensor(small)
        else:
            t = _to_tensor(img)
            if s != w:
                t = tnf.interpolate(t[None], size=(s, s), mode="bilinear", align_corners=False)[0]
        crops.append(t)
        transforms.append(CropTransform(s / w, (0.0, 0.0), s))
        photos.append(img)
        shrunk.append(small if s < w else img)
    if len({c.shape for c in crops}) > 1:
        raise MvfError(f"{paths[names[0]]}: the views differ in size; pass images of one size")
    files = [Path(paths[v]) for v in names]
    return Views(names, torch.stack(crops), transforms, photos, files,
                 warnings=same_view_warnings(names, shrunk, files))


def detect_views(paths: dict[str, Path], size: int = 224, landmark_files: dict[str, Path] | None = None,
                 auto_order: bool = False, crop: bool = True) -> Views:
    """Read photos, get landmarks (files take precedence over mediapipe), check the view order, crop.

    Args:
        paths: view name -> image file. size: crop side (px).
        landmark_files: view name -> ``.pts``/``.npy`` file with 68 points in that photo.
        auto_order: reassign photos whose detected yaw contradicts their slot (else only warn).
        crop: cut MVF-Net-style crops (`mvf.recon.crop`); False takes square images already in
            the model's framing (resized to ``size``) and only finds their landmarks.
    Raises `MvfError` naming the image for unreadable images, no face or bad landmark files.
    """
    landmark_files = {v: f for v, f in (landmark_files or {}).items() if v in paths}
    for f in landmark_files.values():  # bad landmark files are reported before detection runs
        read_face_landmarks(f)
    photos = {v: read_view_image(p) for v, p in paths.items()}
    warnings = same_view_warnings(tuple(photos), list(photos.values()), [Path(paths[v]) for v in photos])
    detector = LandmarkDetector() if any(v not in landmark_files for v in paths) else None
    try:
        lms = {v: load_or_detect(photos[v], paths[v], landmark_files.get(v), detector) for v in paths}
    finally:
        if detector is not None:
            detector.close()
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
    order = tuple(v for v in VIEWS if v in slot_of.values())
    given_for = {slot: given for given, slot in slot_of.items()}
    crops, lm_crop, vis, transforms, raws = [], [], [], [], []
    for slot in order:
        given = given_for[slot]
        img, lm = photos[given], lms[given]
        if crop:
            cimg, tf = crop_image(img, lm.points, out_size=size)
            crops.append(_to_tensor(np.asarray(cimg)))
        else:
            framed = framed_views({slot: paths[given]}, size)
            crops.append(framed.crops[0])
            tf = framed.transforms[0]
        lm_crop.append(torch.from_numpy(np.asarray(tf.to_crop(lm.points), np.float32)))
        vis.append(torch.from_numpy(lm.visible.astype(np.float32)))
        if lm.raw478 is not None:
            raws.append(torch.from_numpy(np.asarray(tf.to_crop(lm.raw478[:, :2]), np.float32)))
        transforms.append(tf)
    return Views(order, torch.stack(crops), transforms, [photos[given_for[s]] for s in order],
                 [Path(paths[given_for[s]]) for s in order], torch.stack(lm_crop), torch.stack(vis),
                 [lms[given_for[s]].points for s in order], warnings, crop,
                 torch.stack(raws) if len(raws) == len(order) else None)
