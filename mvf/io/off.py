"""OFF (Object File Format): trimesh reader and writer, geometry only."""
from __future__ import annotations

from pathlib import Path

from mvf.fileio import write_bytes
from mvf.io.mesh import Mesh, export_trimesh, read_trimesh

SUFFIXES = (".off",)


def read(path: Path) -> Mesh:
    """Vertices and triangles of an OFF file."""
    return read_trimesh(path)


def write(path: Path, mesh: Mesh) -> list[Path]:
    """Write ``mesh`` as OFF text, atomically. Returns ``[path]``."""
    write_bytes(path, export_trimesh(mesh, "off").encode())
    return [path]
