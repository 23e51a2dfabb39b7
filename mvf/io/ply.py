"""PLY: binary little-endian writer (float32 xyz mm, optional uchar rgb, int32 triangles); trimesh reader."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mvf.fileio import write_bytes
from mvf.io.mesh import Mesh, read_trimesh

SUFFIXES = (".ply",)


def ply_bytes(verts: np.ndarray, faces: np.ndarray, colours: np.ndarray | None = None,
              comment: str = "mvf mesh, mm") -> bytes:
    """Binary little-endian PLY: float32 xyz (mm), uchar rgb per vertex when given, int32 triangles.

    Args: verts ``(N, 3)``; faces ``(F, 3)``; colours ``(N, 3)`` in [0, 1] or None.
    """
    verts = np.asarray(verts, np.float32)
    faces = np.asarray(faces, np.int32)
    rgb_props = "property uchar red\nproperty uchar green\nproperty uchar blue\n" if colours is not None else ""
    header = (
        f"ply\nformat binary_little_endian 1.0\ncomment {comment}\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"{rgb_props}element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    fields = [("p", "<f4", 3)] + ([("c", "u1", 3)] if colours is not None else [])
    vrec = np.empty(len(verts), np.dtype(fields))
    vrec["p"] = verts
    if colours is not None:
        vrec["c"] = (np.clip(np.asarray(colours, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    frec = np.empty(len(faces), np.dtype([("n", "u1"), ("i", "<i4", 3)]))
    frec["n"], frec["i"] = 3, faces
    return header + vrec.tobytes() + frec.tobytes()


def read(path: Path) -> Mesh:
    """Vertices, triangles and per-vertex colours (when present) of a PLY file."""
    return read_trimesh(path)


def write(path: Path, mesh: Mesh) -> list[Path]:
    """Write ``mesh`` (geometry and colours) as binary PLY, atomically. Returns ``[path]``."""
    write_bytes(path, ply_bytes(mesh.vertices, mesh.faces, mesh.colours))
    return [path]
