"""Torch datasets: labelled synthetic triplets and unlabelled (real) triplets.

Both yield dicts that torch's default collate batches (batch dimension first):

* `SynthDataset`: ``images`` (V, 3, H, W) float in [0, 1], ``id`` (K,), ``exp`` (E,),
  ``pose`` (V, 6), ``landmarks`` (V, 68, 2) px, ``landmark_visible`` (V, 68) float,
  ``masks`` (V, H, W) float, ``subject`` str.
* `UnlabelledTriplets`: ``images``, ``subject`` and, when the folder has landmark files
  (``<subject>/<view>.pts`` iBUG, 1-based, or ``.npy`` (68, 2) in mvf's pixel frame) or is a
  synthetic dataset, ``landmarks`` and ``landmark_visible`` (zeros/0 for a view without one).

With ``size`` set, images are resized to ``size x size`` and every pixel quantity (landmarks,
``f``, ``tx``, ``ty``) is scaled by the same factor (the pixel frame's corner is the origin, so
scaling is exact).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from PIL import Image, UnidentifiedImageError

from mvf.data.augment import AugmentConfig, augment_sample
from mvf.data.format import LABELS_NAME, is_synth_dataset, read_index, read_labels, subject_complete, subject_files
from mvf.errors import MvfError, file_error
from mvf.fileio import find_view_image, read_image
from mvf.recon.detect import read_landmark_file
from renderer.views import VIEWS

LANDMARK_SUFFIXES = (".pts", ".npy")


def _view_indices(views) -> list[int]:
    out = []
    for v in views:
        if v not in VIEWS:
            raise MvfError(f"unknown view '{v}' (choose from {', '.join(VIEWS)})")
        out.append(VIEWS.index(v))
    return out


def _to_tensor_images(images: list[np.ndarray]) -> torch.Tensor:
    """``(V, 3, H, W)`` float32 in [0, 1] from uint8 ``(H, W, 3)`` arrays."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(V, C, H, W)`` to ``size x size`` (bilinear, antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = size < images.shape[-1]
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink).clamp(0.0, 1.0)


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(V, H, W)`` float masks to ``size x size`` (area-weighted, then > 0.5)."""
    if masks.shape[-2:] == (size, size):
        return masks
    shrink = size < masks.shape[-1]
    m = F.interpolate(masks[:, None], size=(size, size), mode="bilinear", align_corners=False,
                      antialias=shrink)[:, 0]
    return (m > 0.5).to(masks.dtype)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A torch generator for one item's augmentation, from (seed, epoch, index)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class SynthDataset(Dataset):
    """Labelled synthetic triplets written by ``mvf synth`` (see `mvf.data.format`).

    Args:
        root: dataset folder with ``index.json``.
        subjects: subject names to use (default: all in the index).
        augment: an `AugmentConfig` to augment with, or None.
        views: which views, in which order (default front, left, right).
        size: output image size (default: as stored).
        seed: augmentation seed; each item's draw depends on (seed, epoch, index), see
            `set_epoch`.
    """

    def __init__(self, root: str | os.PathLike, subjects: list[str] | None = None,
                 augment: AugmentConfig | None = None, views=VIEWS, size: int | None = None,
                 seed: int = 0):
        self.root = Path(root)
        self.index = read_index(self.root)
        self.stored_size = int(self.index["size"])
        self.subjects = list(self.index["subjects"] if subjects is None else subjects)
        for s in self.subjects:
            if not subject_complete(self.root / s):
                missing = next(p for p in subject_files(self.root / s) if not p.is_file())
                raise file_error(missing, "missing (incomplete subject; re-run `mvf synth` to finish it)")
        self.views = tuple(views)
        self.view_ids = _view_indices(self.views)
        if size is not None and size < 8:
            raise MvfError(f"size {size}: must be at least 8 px")
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict:
        name = self.subjects[i]
        folder = self.root / name
        labels = read_labels(folder / LABELS_NAME)
        vid = self.view_ids
        images = _to_tensor_images([read_image(folder / f"{v}.png") for v in self.views])
        sample = {
            "images": images,
            "id": torch.from_numpy(labels["id"].astype(np.float32)),
            "exp": torch.from_numpy(labels["exp"].astype(np.float32)),
            "pose": torch.from_numpy(labels["pose"][vid].astype(np.float32)),
            "landmarks": torch.from_numpy(labels["landmarks"][vid].astype(np.float32)),
            "landmark_visible": torch.from_numpy(labels["landmark_visible"][vid].astype(np.float32)),
            "masks": torch.from_numpy(labels["masks"][vid].astype(np.float32)),
            "subject": name,
        }
        if images.shape[-1] != self.stored_size or labels["masks"].shape[-1] != self.stored_size:
            raise file_error(folder, f"images are {images.shape[-1]} px but the index says {self.stored_size}")
        if self.size is not None and self.size != self.stored_size:
            sample = rescale_sample(sample, self.size)
        if self.augment is not None:
            sample = augment_sample(sample, self.augment, item_generator(self.seed, self.epoch, i))
        return sample


def rescale_sample(sample: dict, size: int) -> dict:
    """Resize a sample's images/masks to ``size`` and scale its pixel labels to match."""
    out = dict(sample)
    h, w = sample["images"].shape[-2:]
    if h != w:
        raise MvfError(f"{sample.get('subject', 'sample')}: images are {w}x{h}, not square; crop them first")
    s = size / w
    out["images"] = resize_images(sample["images"], size)
    if "masks" in sample:
        out["masks"] = resize_masks(sample["masks"], size)
    if "landmarks" in sample:
        out["landmarks"] = sample["landmarks"] * s
    if "pose" in sample:
        pose = sample["pose"].clone()
        pose[..., 0] *= s
        pose[..., 4:6] *= s
        out["pose"] = pose
    return out


def _landmark_file(folder: Path, view: str) -> Path | None:
    """``<folder>/<view>.pts`` or ``.npy``; `MvfError` if both exist (ambiguous)."""
    found = [folder / f"{view}{s}" for s in LANDMARK_SUFFIXES if (folder / f"{view}{s}").is_file()]
    if len(found) > 1:
        raise file_error(folder, f"both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _check_image(path: Path) -> None:
    """`MvfError` naming ``path`` unless it opens as an image (header and checksums)."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise file_error(path, "unreadable image (not a valid PNG/JPEG file)") from None


class UnlabelledTriplets(Dataset):
    """Triplets without 3D labels: ``<root>/<subject>/{front,left,right}.<png|jpg>``.

    Optional per-view landmark files ``<subject>/<view>.pts|.npy`` are exposed as
    ``landmarks``/``landmark_visible``. A synthetic dataset folder is accepted too (its GT
    2D landmarks play the role of landmark files; other labels are ignored).

    Args:
        root: folder of subject folders.
        views: views to load, in order.
        size: resize square images to ``size`` (landmarks scaled to match).
        skip_bad: skip (with a warning) subjects with a missing view or an unreadable image or
            landmark file, instead of raising `MvfError` naming it.
    """

    def __init__(self, root: str | os.PathLike, views=VIEWS, size: int | None = None,
                 skip_bad: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise file_error(self.root, "not a folder of subject folders")
        self.views = tuple(views)
        self.view_ids = _view_indices(self.views)
        self.size = size
        self.synthetic = is_synth_dataset(self.root)
        if self.synthetic:
            names = list(read_index(self.root)["subjects"])
        else:
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.items: list[tuple[str, list[Path], list[Path | None]]] = []
        self.skipped: list[tuple[str, str]] = []
        for name in names:
            try:
                self.items.append(self._scan(self.root / name))
            except MvfError as e:
                if not skip_bad:
                    raise
                self.skipped.append((name, str(e)))
                warnings.warn(f"skipping subject {name}: {e}", stacklevel=2)
        if not self.items:
            raise file_error(self.root, "no usable subjects (each needs front, left and right images)")
        self.has_landmarks = self.synthetic or any(f is not None for _, _, lms in self.items for f in lms)

    def _scan(self, folder: Path) -> tuple[str, list[Path], list[Path | None]]:
        if not folder.is_dir():
            raise file_error(folder, "subject folder not found")
        images = [find_view_image(folder, v) for v in self.views]
        for p in images:
            _check_image(p)
        if self.synthetic:
            if not (folder / LABELS_NAME).is_file():
                raise file_error(folder / LABELS_NAME, "missing (incomplete subject)")
            return folder.name, images, [folder / LABELS_NAME] * len(self.views)
        return folder.name, images, [_landmark_file(folder, v) for v in self.views]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        name, paths, lm_files = self.items[i]
        arrays = [read_image(p) for p in paths]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1 and self.size is None:
            raise file_error(self.root / name, f"views differ in size {sorted(s[:2] for s in shapes)}; "
                             "pass a size to resize them")
        sample: dict = {"subject": name}
        lms, vis, scales = [], [], []
        for v, (arr, lm_file) in enumerate(zip(arrays, lm_files)):
            h, w = arr.shape[:2]
            if self.size is not None and h != w:
                raise file_error(paths[v], f"image is {w}x{h}, not square; crop it first")
            scales.append(1.0 if self.size is None else self.size / w)
            if not self.has_landmarks:
                continue
            if self.synthetic:
                labels = read_labels(lm_file)
                lms.append(labels["landmarks"][self.view_ids[v]].astype(np.float32))
                vis.append(labels["landmark_visible"][self.view_ids[v]].astype(np.float32))
            elif lm_file is not None:
                pts = read_landmark_file(lm_file).astype(np.float32)
                lms.append(pts)
                inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
                vis.append(inside.astype(np.float32))
            else:
                lms.append(np.zeros((68, 2), np.float32))
                vis.append(np.zeros(68, np.float32))
        if self.size is not None:
            images = torch.cat([resize_images(_to_tensor_images([a]), self.size) for a in arrays])
        else:
            images = _to_tensor_images(arrays)
        sample["images"] = images
        if self.has_landmarks:
            sample["landmarks"] = torch.from_numpy(np.stack(lms)) * torch.tensor(scales)[:, None, None]
            sample["landmark_visible"] = torch.from_numpy(np.stack(vis))
        return sample


__all__ = ["SynthDataset", "UnlabelledTriplets", "rescale_sample", "item_generator"]
