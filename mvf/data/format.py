"""The on-disk synthetic dataset format (version 1): reading, writing and checking it.

::

    DIR/index.json            {"format_version": 1, "generator": {...}, "seed": S, "size": 224,
                               "model": {"asset_id", "region", "n_id", "n_exp"}, "subjects": [...]}
    DIR/<subject>/front.png   8-bit RGB, size x size (also left.png, right.png)
    DIR/<subject>/labels.npz  see LABEL_SPEC
    DIR/<subject>/mesh.ply    ground-truth mesh (mm) with per-vertex colours
    DIR/<subject>/done.json   {"sha256": {file name: hex digest}} of the five files, written last

For reading, a subject is complete when its five files exist (``done.json`` is optional, so
datasets of older versions load). Each file is written atomically, ``labels.npz`` after the
images and mesh, the marker ``done.json`` after all of them; `mvf synth` counts a subject as
done only when `subject_verified` holds (checksums match, or without a marker the files decode).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mvf.errors import MvfError, file_error
from mvf.fileio import remove_temporaries, write_bytes, write_json
from mvf.io.ply import ply_bytes, read as read_ply
from renderer.views import VIEWS

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
LABELS_NAME = "labels.npz"
MESH_NAME = "mesh.ply"
MARKER_NAME = "done.json"

# key -> (dtype kind, shape with symbolic sizes: V views, K id, E exp, N vertices, H, W)
LABEL_SPEC: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "id": ("f", ("K",)),
    "exp": ("f", ("E",)),
    "pose": ("f", ("V", 6)),
    "landmarks": ("f", ("V", 68, 2)),
    "landmark_visible": ("b", ("V", 68)),
    "masks": ("b", ("V", "H", "W")),
    "colours": ("f", ("N", 3)),
}
# Extra keys written by `mvf synth` (readers must not require them).
EXTRA_KEYS = ("jaw_vertex_ids", "jaw_on_silhouette", "light_ambient", "light_directions", "light_colours")


def subject_files(subject_dir: str | os.PathLike) -> list[Path]:
    """The files that make a subject complete (labels last)."""
    d = Path(subject_dir)
    return [d / f"{v}.png" for v in VIEWS] + [d / MESH_NAME, d / LABELS_NAME]


def subject_complete(subject_dir: str | os.PathLike) -> bool:
    """True when every file of the subject exists."""
    return all(p.is_file() for p in subject_files(subject_dir))


def subject_verified(subject_dir: str | os.PathLike) -> bool:
    """True when the subject is whole: every file's sha256 matches its ``done.json`` marker, or
    (a subject written before markers existed) every file exists and decodes: the PNGs fully,
    ``labels.npz`` checked against `LABEL_SPEC`, ``mesh.ply`` parsed."""
    d = Path(subject_dir)
    files = subject_files(d)
    if not all(p.is_file() for p in files):
        return False
    marker = d / MARKER_NAME
    if marker.is_file():
        try:
            sums = json.loads(marker.read_text())["sha256"]
            return all(sums.get(p.name) == _sha256(p.read_bytes()) for p in files)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return False
    try:
        for p in files[: len(VIEWS)]:
            with Image.open(p) as im:
                im.load()
        read_labels(d / LABELS_NAME)
        read_ply(d / MESH_NAME)
    except Exception:  # any decoding failure means: not whole, make it again
        return False
    return True


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def subject_name(index: int) -> str:
    """Folder name of subject ``index``: six digits."""
    return f"{index:06d}"


def encode_labels(labels: dict[str, np.ndarray]) -> bytes:
    """``labels.npz`` bytes (compressed)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **labels)
    return buf.getvalue()


def write_labels(path: str | os.PathLike, labels: dict[str, np.ndarray]) -> None:
    """Write ``labels.npz`` atomically after checking it against `LABEL_SPEC`."""
    check_labels(labels, path)
    write_bytes(path, encode_labels(labels))


def check_labels(labels: dict[str, Any], where: str | os.PathLike) -> None:
    """`MvfError` naming ``where`` unless ``labels`` has every key of `LABEL_SPEC` consistently."""
    sizes: dict[str, int] = {}
    for key, (kind, shape) in LABEL_SPEC.items():
        if key not in labels:
            raise file_error(where, f"labels lack '{key}'")
        arr = np.asarray(labels[key])
        if (kind == "f" and arr.dtype.kind != "f") or (kind == "b" and arr.dtype != np.bool_):
            raise file_error(where, f"labels '{key}' has dtype {arr.dtype}")
        if arr.ndim != len(shape):
            raise file_error(where, f"labels '{key}' has shape {arr.shape}, expected {len(shape)} dims")
        for dim, want in zip(arr.shape, shape):
            if isinstance(want, int):
                ok = dim == want
            else:
                ok = sizes.setdefault(want, dim) == dim
            if not ok:
                raise file_error(where, f"labels '{key}' has shape {arr.shape}, inconsistent with the others")


def read_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and check a ``labels.npz``; `MvfError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "labels file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = {k: z[k] for k in z.files}
    except Exception:
        raise file_error(path, "not a readable labels .npz file") from None
    check_labels(labels, path)
    return labels


def read_index(root: str | os.PathLike) -> dict:
    """Read and check ``DIR/index.json``; `MvfError` naming it on any problem."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise file_error(path, "not a synthetic dataset (no index.json; make one with `mvf synth`)")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise file_error(path, "not a readable JSON index") from None
    if not isinstance(index, dict):
        raise file_error(path, "the index must be a JSON object")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise file_error(path, f"format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("generator", "seed", "size", "model", "subjects"):
        if key not in index:
            raise file_error(path, f"index lacks '{key}'")
    if not isinstance(index["subjects"], list):
        raise file_error(path, "'subjects' must be a list")
    return index


def write_index(root: str | os.PathLike, index: dict) -> None:
    """Write ``DIR/index.json`` atomically."""
    write_json(Path(root) / INDEX_NAME, index)


def is_synth_dataset(root: str | os.PathLike) -> bool:
    """True when ``root`` holds an ``index.json``."""
    return (Path(root) / INDEX_NAME).is_file()


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 image (deterministic for given pixels)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_subject(subject_dir: str | os.PathLike, images: np.ndarray, verts: np.ndarray,
                  faces: np.ndarray, labels: dict[str, np.ndarray], compress_level: int = 1) -> None:
    """Write one subject: three PNGs ``images`` ``(V, H, W, 3)`` uint8, the mesh, labels, and
    last the ``done.json`` marker with their checksums (an old marker and orphaned temporaries
    are removed first)."""
    d = Path(subject_dir)
    d.mkdir(parents=True, exist_ok=True)
    check_labels(labels, d / LABELS_NAME)
    (d / MARKER_NAME).unlink(missing_ok=True)
    remove_temporaries(d)  # a killed run's
    contents = {f"{view}.png": png_bytes(img, compress_level) for view, img in zip(VIEWS, images)}
    contents[MESH_NAME] = ply_bytes(verts, faces, labels["colours"], comment="mvf synthetic ground truth, mm")
    contents[LABELS_NAME] = encode_labels(labels)
    for name, data in contents.items():
        write_bytes(d / name, data)
    write_json(d / MARKER_NAME, {"sha256": {name: _sha256(data) for name, data in contents.items()}})


def check_compatible(index: dict, settings: dict, where: str | os.PathLike) -> None:
    """`MvfError` if an existing index was made with other settings than ``settings``."""
    for key in ("generator_version", "seed", "size", "generator", "model", "jawline"):
        if index.get(key) != settings.get(key):
            raise MvfError(f"{where}: existing dataset was made with a different '{key}' "
                           f"({_short(index.get(key))} vs {_short(settings.get(key))}); "
                           "use another --out folder or delete this one")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
