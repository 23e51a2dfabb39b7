"""Mesh export and import (.obj via PyTorch3D, .ply via trimesh), written atomically.

* ``.obj``: vertices (mm), triangles, UVs when given; with a texture image, an MTL file and a
  PNG beside it (PyTorch3D's `save_obj`).
* ``.ply``: vertices, triangles and per-vertex colours when given (trimesh's exporter).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvf.errors import MvfError, file_error
from mvf.fileio import atomic_path

MESH_SUFFIXES = (".obj", ".ply")


@dataclass
class LoadedMesh:
    """A mesh read back from disk: ``verts`` (N, 3) mm, ``faces`` (F, 3), optional colours/UVs."""

    verts: np.ndarray
    faces: np.ndarray
    colours: np.ndarray | None = None
    verts_uvs: np.ndarray | None = None
    faces_uvs: np.ndarray | None = None


def _np(x, dtype) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def check_mesh_suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix of ``path`` if it is a supported mesh format, else `MvfError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise file_error(path, f"unknown mesh format '{suffix or '(none)'}' (use .obj or .ply)")
    return suffix


def save_mesh(
    path: str | os.PathLike, verts, faces, colours=None, verts_uvs=None, faces_uvs=None,
    texture=None,
) -> list[Path]:
    """Write a mesh; the format follows the suffix of ``path`` (.obj or .ply).

    Args:
        verts: ``(N, 3)`` mm. faces: ``(F, 3)`` int. colours: optional ``(N, 3)`` in [0, 1].
        verts_uvs: optional ``(T, 2)``, faces_uvs: ``(F, 3)`` (OBJ only).
        texture: optional ``(H, W, 3)`` image in [0, 1] or uint8 (OBJ only; needs UVs).
    Returns:
        The files written (the mesh, plus MTL and PNG for a textured OBJ).
    """
    path = Path(path)
    suffix = check_mesh_suffix(path)
    v = _np(verts, np.float32)
    f = _np(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise MvfError(f"{path}: expected verts (N, 3) and faces (F, 3), got {v.shape} and {f.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".ply":
        return [_save_ply(path, v, f, _np(colours, np.float32))]
    return _save_obj(path, v, f, _np(verts_uvs, np.float32), _np(faces_uvs, np.int64), texture)


def _save_ply(path: Path, v: np.ndarray, f: np.ndarray, colours: np.ndarray | None) -> Path:
    import trimesh

    vc = None
    if colours is not None:
        rgb = (np.clip(colours, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        vc = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    mesh = trimesh.Trimesh(vertices=v.astype(np.float64), faces=f, vertex_colors=vc, process=False)
    data = mesh.export(file_type="ply", encoding="binary")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _save_obj(path: Path, v, f, verts_uvs, faces_uvs, texture) -> list[Path]:
    from pytorch3d.io import save_obj
    from pytorch3d.io.obj_io import _save as save_obj_body

    has_uvs = verts_uvs is not None and faces_uvs is not None
    if texture is not None and not has_uvs:
        raise MvfError(f"{path}: a texture needs UVs (verts_uvs and faces_uvs)")
    tv, tf = torch.from_numpy(v), torch.from_numpy(f)
    if texture is None:
        # PyTorch3D's public save_obj writes UVs only together with a texture; its body writer
        # writes `v`, `vt` and `f v/vt` lines for UVs alone.
        with atomic_path(path) as tmp, open(tmp, "w") as fh:
            save_obj_body(fh, tv, tf, 5, verts_uvs=torch.from_numpy(verts_uvs) if has_uvs else None,
                          faces_uvs=torch.from_numpy(faces_uvs) if has_uvs else None, save_texture=has_uvs)
        return [path]
    tex = np.asarray(texture)
    tex = tex.astype(np.float32) / 255.0 if tex.dtype == np.uint8 else tex.astype(np.float32)
    # save_obj derives the .mtl/.png names from the file name, so write under the final stem in
    # a private folder and move the files into place (OBJ last).
    tmpdir = path.parent / f".{path.stem}.tmpdir"
    tmpdir.mkdir(exist_ok=True)
    written = []
    try:
        save_obj(tmpdir / path.name, tv, tf, decimal_places=5, verts_uvs=torch.from_numpy(verts_uvs),
                 faces_uvs=torch.from_numpy(faces_uvs),
                 texture_map=torch.from_numpy(np.clip(tex[..., :3], 0.0, 1.0)))
        for extra in (".png", ".mtl", ".obj"):
            os.replace(tmpdir / (path.stem + extra), path.with_suffix(extra))
            written.append(path.with_suffix(extra))
    finally:
        for leftover in tmpdir.glob("*"):
            leftover.unlink()
        tmpdir.rmdir()
    return written[::-1]


def load_mesh(path: str | os.PathLike) -> LoadedMesh:
    """Read an .obj or .ply mesh (vertex order preserved). `MvfError` naming the file on failure."""
    path = Path(path)
    suffix = check_mesh_suffix(path)
    if not path.is_file():
        raise file_error(path, "mesh file not found")
    try:
        if suffix == ".obj":
            from pytorch3d.io import load_obj

            verts, faces, aux = load_obj(path, load_textures=True)
            uvs = aux.verts_uvs.numpy() if aux.verts_uvs is not None else None
            fuv = faces.textures_idx.numpy() if uvs is not None else None
            return LoadedMesh(verts.numpy(), faces.verts_idx.numpy(), None, uvs, fuv)
        import trimesh

        mesh = trimesh.load(path, process=False, force="mesh")
        colours = None
        vc = getattr(mesh.visual, "vertex_colors", None)
        if mesh.visual.kind == "vertex" and vc is not None and len(vc) == len(mesh.vertices):
            colours = np.asarray(vc)[:, :3].astype(np.float32) / 255.0
        return LoadedMesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64), colours)
    except MvfError:
        raise
    except Exception as e:
        raise file_error(path, f"unreadable mesh ({type(e).__name__}: {e})") from None
