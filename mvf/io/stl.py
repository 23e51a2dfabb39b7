"""STL: trimesh reader and binary writer, geometry only (STL has no shared vertices: a read merges none)."""
from __future__ import annotations

from pathlib import Path

from mvf.fileio import write_bytes
from mvf.io.mesh import Mesh, export_trimesh, read_trimesh

SUFFIXES = (".stl",)


def read(path: Path) -> Mesh:
    """Vertices and triangles of an STL file (ASCII or binary)."""
    return read_trimesh(path)


def write(path: Path, mesh: Mesh) -> list[Path]:
    """Write ``mesh`` as binary STL, atomically. Returns ``[path]``."""
    write_bytes(path, export_trimesh(mesh, "stl"))
    return [path]
