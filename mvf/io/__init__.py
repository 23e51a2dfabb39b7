"""One mesh I/O entry point: `load_mesh` / `save_mesh` dispatch on the suffix to one module per format.

(Modelled on PyTorch3D's ``io/pluggable.py``.) Formats: ``.obj`` (UVs, MTL + PNG texture),
``.ply`` (per-vertex colours), ``.off``, ``.stl`` (read and write), ``.wrl``/``.vrml`` (read).
Every read returns one record, `Mesh`; every write is atomic and returns the files written.
Bad files raise `MvfError` naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mvf.errors import file_error
from mvf.io import obj, off, ply, stl, vrml
from mvf.io.mesh import Mesh, make_mesh

_FORMATS = {suffix: module for module in (obj, ply, off, stl, vrml) for suffix in module.SUFFIXES}
READ_SUFFIXES = tuple(_FORMATS)
WRITE_SUFFIXES = tuple(s for s, m in _FORMATS.items() if hasattr(m, "write"))

__all__ = ["Mesh", "READ_SUFFIXES", "WRITE_SUFFIXES", "check_mesh_suffix", "load_mesh", "save_mesh"]


def check_mesh_suffix(path: str | os.PathLike, write: bool = False) -> str:
    """The lower-case suffix of ``path`` if mvf can read (or ``write``) it, else `MvfError`."""
    suffix = Path(path).suffix.lower()
    allowed = WRITE_SUFFIXES if write else READ_SUFFIXES
    if suffix not in allowed:
        raise file_error(path, f"unsupported mesh type '{suffix or '(none)'}' (use {', '.join(allowed)})")
    return suffix


def load_mesh(path: str | os.PathLike) -> Mesh:
    """Read a mesh by suffix (vertex order kept). `MvfError` naming the file on any failure."""
    path = Path(path)
    module = _FORMATS[check_mesh_suffix(path)]
    if not path.is_file():
        raise file_error(path, "mesh file not found")
    mesh = module.read(path)
    if len(mesh.vertices) == 0:
        raise file_error(path, "the mesh has no vertices")
    if not np.isfinite(mesh.vertices).all():
        raise file_error(path, "the mesh has NaN or infinite vertex coordinates")
    return mesh


def save_mesh(path: str | os.PathLike, verts, faces, *, colours=None, verts_uvs=None, faces_uvs=None,
              texture=None) -> list[Path]:
    """Write a mesh; the format follows the suffix of ``path``.

    Args (torch tensors or numpy): verts ``(N, 3)`` mm; faces ``(F, 3)`` int; colours ``(N, 3)``
    in [0, 1] (PLY); verts_uvs ``(T, 2)`` and faces_uvs ``(F, 3)`` (OBJ); texture ``(H, W, 3)``
    uint8 or float in [0, 1] (OBJ, needs UVs).
    Returns:
        Every file written: the mesh (first), plus ``<stem>.mtl`` and ``<stem>.png`` for a
        textured OBJ.
    """
    path = Path(path)
    module = _FORMATS[check_mesh_suffix(path, write=True)]
    mesh = make_mesh(path, verts, faces, colours, verts_uvs, faces_uvs, texture)
    return module.write(path, mesh)
