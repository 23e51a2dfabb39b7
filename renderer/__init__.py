"""renderer: rasterization (fast CPU backend or PyTorch3D), shading, visibility, cross-view warps.

Every function takes one mesh per view, ``(N, Nv, 3)`` model-space mm with ``(N, 6)`` poses
(or ``(B, V, ...)``, flattened row-major), faces ``(F, 3)`` shared by all meshes, and images
in the pixel frame of `renderer.camera` (pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``).
"""
from renderer.config import BACKENDS, DEFAULT_VIS_TOL_MM, RendererConfig, resolve_backend
from renderer.interp import interpolate_vertex_attr, pixel_mask, surface_points
from renderer.raster import fragments_from_pix_to_face, rasterize, rasterize_pix_to_face
from renderer.shading import Lights, render
from renderer.visibility import depth_test, surface_planes, vertex_visibility
from renderer.warp import (
    ALL_PAIRS, WarpGeometry, all_pairs, covisibility, cross_view_warp, sample_pairs, warp_geometry,
)

__all__ = [
    "ALL_PAIRS", "BACKENDS", "DEFAULT_VIS_TOL_MM", "Lights", "RendererConfig", "WarpGeometry",
    "all_pairs", "covisibility", "cross_view_warp", "depth_test", "fragments_from_pix_to_face",
    "interpolate_vertex_attr", "pixel_mask", "rasterize", "rasterize_pix_to_face", "render", "resolve_backend",
    "sample_pairs", "surface_planes", "surface_points", "vertex_visibility", "warp_geometry",
]
