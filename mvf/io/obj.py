"""Wavefront OBJ: own reader (polygons with per-corner UV ids, MTL ``map_Kd`` texture) and writer.

The writer puts ``v`` (mm, 5 decimals), ``vt`` (6 decimals) and ``f v/vt`` lines; with a texture
it writes ``<stem>.png`` and ``<stem>.mtl`` first and the OBJ last, so a reader never finds the
OBJ without its material. (PyTorch3D's public ``save_obj`` writes UVs only with a texture, so the
text is written here.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvf.errors import file_error
from mvf.fileio import read_image, write_bytes, write_image
from mvf.io.mesh import Mesh

SUFFIXES = (".obj",)
MATERIAL = "material_0"


@dataclass
class ObjPolygons:
    """Polygons of an OBJ file: vertex and UV indices per corner (0-based, -1: no UV), ragged."""

    verts: np.ndarray  # (N, 3) float64
    uvs: np.ndarray  # (T, 2) float64
    poly_v: list[list[int]]
    poly_vt: list[list[int]]
    mtllib: str | None = None


def read_vertices(path: Path) -> np.ndarray:
    """Vertex positions ``(N, 3)`` float64 of an OBJ file (fast path: only ``v`` lines)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror})") from None
    lines = re.findall(r"^v\s+(\S+)\s+(\S+)\s+(\S+)", text, flags=re.M)
    if not lines:
        raise file_error(path, "no vertices in this OBJ file")
    try:
        return np.asarray(lines, dtype=np.float64)
    except ValueError:
        raise file_error(path, "non-numeric vertex coordinates") from None


def _index(token: str, n: int) -> int:
    i = int(token)
    return i - 1 if i > 0 else n + i  # OBJ is 1-based; negative ids count from the end


def read_polygons(path: Path) -> ObjPolygons:
    """Vertices, UVs and polygons (with per-corner UV ids) of an OBJ file."""
    verts, uvs, poly_v, poly_vt, mtllib = [], [], [], [], None
    try:
        fh = open(path, errors="replace")
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror})") from None
    try:
        with fh:
            for line in fh:
                if line.startswith("v "):
                    verts.append(line.split()[1:4])
                elif line.startswith("vt "):
                    uvs.append(line.split()[1:3])
                elif line.startswith("f "):
                    vs, vts = [], []
                    for corner in line.split()[1:]:
                        parts = corner.split("/")
                        vs.append(_index(parts[0], len(verts)))
                        vts.append(_index(parts[1], len(uvs)) if len(parts) > 1 and parts[1] else -1)
                    poly_v.append(vs)
                    poly_vt.append(vts)
                elif line.startswith("mtllib ") and mtllib is None:
                    mtllib = line.split(None, 1)[1].strip()
        v = np.asarray(verts, np.float64).reshape(-1, 3)
        t = np.asarray(uvs, np.float64).reshape(-1, 2)
    except (ValueError, IndexError) as e:
        raise file_error(path, f"unreadable OBJ ({type(e).__name__}: {e})") from None
    if not verts or not poly_v:
        raise file_error(path, "not a mesh OBJ (no vertices or faces)")
    return ObjPolygons(v, t, poly_v, poly_vt, mtllib)


def triangulate(poly_v: list[list[int]], poly_vt: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons: ``(F, 3)`` vertex ids and ``(F, 3)`` UV ids."""
    tri_v, tri_vt = [], []
    for vs, vts in zip(poly_v, poly_vt):
        for k in range(1, len(vs) - 1):
            tri_v.append((vs[0], vs[k], vs[k + 1]))
            tri_vt.append((vts[0], vts[k], vts[k + 1]))
    return np.asarray(tri_v, np.int64).reshape(-1, 3), np.asarray(tri_vt, np.int64).reshape(-1, 3)


def _texture(path: Path, mtllib: str | None) -> np.ndarray | None:
    """The ``map_Kd`` image of the OBJ's material library, if both exist."""
    mtl = path.parent / mtllib if mtllib else None
    if mtl is None or not mtl.is_file():
        return None
    for line in mtl.read_text(errors="replace").splitlines():
        if line.strip().startswith("map_Kd "):
            image = path.parent / line.strip().split(None, 1)[1]
            return read_image(image).astype(np.float32) / 255.0 if image.is_file() else None
    return None


def read(path: Path) -> Mesh:
    """Triangles (polygons fan-triangulated), UVs and texture (via the MTL) of an OBJ file."""
    obj = read_polygons(path)
    faces, faces_uvs = triangulate(obj.poly_v, obj.poly_vt)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(obj.verts)):
        raise file_error(path, f"face vertex index out of range for {len(obj.verts)} vertices")
    has_uvs = len(obj.uvs) > 0 and len(faces_uvs) > 0 and faces_uvs.min() >= 0
    if has_uvs and faces_uvs.max() >= len(obj.uvs):
        raise file_error(path, f"face UV index out of range for {len(obj.uvs)} UVs")
    return Mesh(obj.verts, faces, None, obj.uvs.astype(np.float32) if has_uvs else None,
                faces_uvs if has_uvs else None, _texture(path, obj.mtllib) if has_uvs else None)


def write(path: Path, mesh: Mesh) -> list[Path]:
    """Write ``mesh`` as OBJ (+ ``<stem>.mtl`` and ``<stem>.png`` with a texture), atomically.

    Returns the paths written, OBJ first.
    """
    stem, written = path.stem, [path]
    head = "# mvf mesh, millimetres\n"
    if mesh.texture is not None:
        write_image(path.with_suffix(".png"), mesh.texture)
        write_bytes(path.with_suffix(".mtl"), (f"newmtl {MATERIAL}\nKa 1.0 1.0 1.0\nKd 1.0 1.0 1.0\n"
                                               f"Ks 0.0 0.0 0.0\nillum 1\nmap_Kd {stem}.png\n").encode())
        head += f"mtllib {stem}.mtl\nusemtl {MATERIAL}\n"
        written += [path.with_suffix(".mtl"), path.with_suffix(".png")]
    v, f = mesh.vertices, mesh.faces + 1
    lines = [head, ("v %.5f %.5f %.5f\n" * len(v)) % tuple(v.ravel().tolist())]
    if mesh.verts_uvs is not None:
        t = mesh.verts_uvs.astype(np.float64)
        corners = np.stack([f, mesh.faces_uvs + 1], -1).reshape(-1, 6)
        lines += [("vt %.6f %.6f\n" * len(t)) % tuple(t.ravel().tolist()),
                  ("f %d/%d %d/%d %d/%d\n" * len(corners)) % tuple(corners.ravel().tolist())]
    else:
        lines.append(("f %d %d %d\n" * len(f)) % tuple(f.ravel().tolist()))
    write_bytes(path, "".join(lines).encode())
    return written


