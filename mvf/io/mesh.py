"""The one mesh record of mvf.io (`Mesh`) and the array checks every format shares."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvf.errors import file_error


@dataclass
class Mesh:
    """A triangle mesh as read from or written to a file.

    vertices ``(N, 3)`` float64 in the file's units (mm for mvf and MICC scans); faces ``(F, 3)``
    int64, 0-based (``(0, 3)`` for a point cloud); colours ``(N, 3)`` float32 in [0, 1];
    verts_uvs ``(T, 2)`` float32 (OBJ convention: v up); faces_uvs ``(F, 3)`` int64;
    texture ``(H, W, 3)`` float32 in [0, 1]. Vertex order is the file's order.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray | None = None
    verts_uvs: np.ndarray | None = None
    faces_uvs: np.ndarray | None = None
    texture: np.ndarray | None = None


def as_array(x, dtype) -> np.ndarray | None:
    """``x`` (torch tensor, array or sequence, or None) as a numpy array of ``dtype``."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def as_image(x) -> np.ndarray | None:
    """An ``(H, W, 3)`` image (uint8, or float in [0, 1]) as float32 in [0, 1]."""
    img = as_array(x, None)
    if img is None:
        return None
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    return np.clip(img[..., :3], 0.0, 1.0)


def make_mesh(path: str | os.PathLike, verts, faces, colours=None, verts_uvs=None, faces_uvs=None,
              texture=None) -> Mesh:
    """Check shapes and build a `Mesh` from tensors or arrays; `MvfError` naming ``path``."""
    m = Mesh(as_array(verts, np.float64), as_array(faces, np.int64), as_array(colours, np.float32),
             as_array(verts_uvs, np.float32), as_array(faces_uvs, np.int64), as_image(texture))
    n = len(m.vertices)
    if m.vertices.ndim != 2 or m.vertices.shape[1] != 3 or m.faces.ndim != 2 or m.faces.shape[1] != 3:
        raise file_error(path, f"expected verts (N, 3) and faces (F, 3), got {m.vertices.shape} and {m.faces.shape}")
    if m.colours is not None and m.colours.shape != (n, 3):
        raise file_error(path, f"expected colours ({n}, 3), got {m.colours.shape}")
    if (m.verts_uvs is None) != (m.faces_uvs is None):
        raise file_error(path, "UVs need both verts_uvs and faces_uvs")
    if m.faces_uvs is not None and m.faces_uvs.shape != m.faces.shape:
        raise file_error(path, f"expected faces_uvs {m.faces.shape}, got {m.faces_uvs.shape}")
    if m.texture is not None and m.verts_uvs is None:
        raise file_error(path, "a texture needs UVs (verts_uvs and faces_uvs)")
    return m


def read_trimesh(path: Path) -> Mesh:
    """Read a mesh with trimesh (vertex order kept, scenes concatenated, vertex colours kept)."""
    import trimesh  # ~1.5 s to import (networkx, scipy.spatial): only when a mesh is read with it

    try:
        loaded = trimesh.load(str(path), process=False, maintain_order=True)
    except Exception as e:
        raise file_error(path, f"unreadable {path.suffix} mesh ({type(e).__name__}: {e})") from None
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.dump()) if loaded.geometry else []
        if not geoms:
            raise file_error(path, "no geometry in the file")
        loaded = trimesh.util.concatenate(geoms)
    verts = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    colours = None
    visual = getattr(loaded, "visual", None)
    vc = getattr(visual, "vertex_colors", None) if getattr(visual, "kind", None) == "vertex" else None
    if vc is not None and len(vc) == len(verts):
        colours = np.asarray(vc)[:, :3].astype(np.float32) / 255.0
    return Mesh(verts, faces, colours)


def export_trimesh(mesh: Mesh, file_type: str) -> bytes:
    """Bytes of ``mesh`` in ``file_type`` via trimesh's exporter (geometry only)."""
    import trimesh

    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(file_type=file_type)
