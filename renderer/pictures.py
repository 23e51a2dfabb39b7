"""Picture sheets for checking geometry against images: one sheet per view.

Each sheet of view ``b`` shows, left to right and top to bottom: the input image, the shaded
mesh over it, the mesh's pixel mask, the photometric error heat map (mean over the other views
of ``|I_{a->b} - I_b|`` on valid pixels), then for every other view ``a`` the co-visibility mask
(pixels of ``b`` visible in ``a``) and the warped image ``I_{a->b}`` (black where invalid), then
any extra panels the caller adds (e.g. flow fields).

`overlay_sheet` draws a reconstruction on a photo (mesh, landmarks, visibility); `heat`,
`dots` and `label` are the colour map and marks every picture uses.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from renderer.camera import project_with_depth
from renderer.views import VIEWS
from renderer.config import DEFAULT_VIS_TOL_MM
from renderer.interp import interpolate_vertex_attr, pixel_mask
from renderer.raster import fragments_from_pix_to_face, rasterize
from renderer.rotations import euler_to_matrix
from renderer.shading import Lights, render
from renderer.warp import all_pairs, sample_pairs, warp_geometry

Panel = tuple[str, np.ndarray]

TITLE_PX = 14
GAP_PX = 2
HEAT_MAX = 0.25  # error (in [0, 1] image units) shown at the top of the colour scale


def heat(values: np.ndarray, vmax: float = HEAT_MAX) -> np.ndarray:
    """``(H, W)`` values in ``[0, vmax]`` to ``(H, W, 3)`` float RGB (black-purple-orange-yellow)."""
    t = np.clip(np.nan_to_num(values / vmax), 0.0, 1.0)
    stops = np.array([0.0, 0.35, 0.7, 1.0])
    colours = np.array([[0.0, 0.0, 0.0], [0.45, 0.05, 0.55], [0.95, 0.45, 0.1], [1.0, 1.0, 0.6]])
    return np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], -1)


def dots(image: np.ndarray, points: np.ndarray, colour: tuple[float, float, float], radius: int) -> None:
    """Draw filled discs of ``radius`` px at ``(K, 2)`` points (image frame) into float ``image`` in place."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = yy ** 2 + xx ** 2 <= radius ** 2 + 0.5
    for x, y in np.asarray(points):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        ys, xs = yy[disc] + int(np.floor(y)), xx[disc] + int(np.floor(x))
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        image[ys[ok], xs[ok]] = colour


def label(panel: np.ndarray, text: str) -> None:
    """Write ``text`` on a black box in the top-left corner of a float panel, in place."""
    img = Image.fromarray((np.clip(panel, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 7 * len(text) + 6, 14], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    panel[...] = np.asarray(img).astype(np.float32) / 255.0


@torch.no_grad()
def overlay_sheet(image: np.ndarray, verts: torch.Tensor, faces: torch.Tensor, normals: torch.Tensor,
                  pose: torch.Tensor, weights: torch.Tensor,
                  marks: Sequence[tuple[np.ndarray, tuple[float, float, float]]] = (),
                  backend: str = "auto") -> np.ndarray:
    """Three panels side by side on ``image`` ``(H, W, 3)`` float in [0, 1]: ``(H, 3 W, 3)`` float.

    1. the mesh (verts ``(N, 3)`` mm, normals ``(N, 3)``, pose ``(6,)`` in the image's pixels),
       Gouraud-shaded by a light from the camera's upper left, blended over the image;
    2. landmarks: each ``(points (K, 2) px, rgb)`` of ``marks`` as dots, later ones smaller;
    3. visibility: the per-vertex ``weights`` ``(N,)`` in [0, 1] as a `heat` map over the darkened image.
    """
    h, w = image.shape[:2]
    frags = rasterize(verts[None], faces, pose[None], (h, w), backend=backend)
    mask = pixel_mask(frags)[0].cpu().numpy()
    light_cam = torch.tensor([-0.35, 0.45, 1.0], device=verts.device)
    light = torch.nn.functional.normalize(light_cam @ euler_to_matrix(pose[1:4]), dim=0)  # model space
    shade = 0.25 + 0.75 * (normals @ light).clamp_min(0.0)
    attrs = torch.stack([shade, weights.to(verts.device).float()], -1)[None]  # (1, N, 2)
    pix = interpolate_vertex_attr(frags, attrs, faces)[0].cpu().numpy()  # (h, w, 2)
    alpha = 0.8 * mask[..., None]
    grey = np.repeat(0.85 * pix[..., :1], 3, -1) * np.array([1.0, 0.97, 0.93])
    shaded = image * (1.0 - alpha) + grey * alpha
    marked = image.copy()
    radius = max(1, int(round(1.2 * max(h, w) / 224)))
    for k, (points, colour) in enumerate(marks):
        dots(marked, np.asarray(points), colour, max(1, radius - k))
    vis = image * 0.35
    vis[mask] = 0.25 * vis[mask] + 0.75 * heat(pix[..., 1], vmax=1.0)[mask]
    for panel, text in ((shaded, "mesh"), (marked, "landmarks"), (vis, "visibility (blend weight)")):
        if h >= 64 and w >= 160:
            label(panel, text)
    return np.concatenate([shaded, marked, vis], 1)


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` tensor to ``(H, W, 3)`` float numpy in [0, 1]."""
    return image.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def _mask_rgb(mask: torch.Tensor) -> np.ndarray:
    return np.repeat(mask.detach().float().cpu().numpy()[..., None], 3, -1)


def compose(panels: Sequence[Panel], columns: int = 4) -> np.ndarray:
    """Tile titled panels (all ``(H, W, 3)`` float in [0, 1]) into one uint8 sheet."""
    h, w = panels[0][1].shape[:2]
    rows = (len(panels) + columns - 1) // columns
    cell_h, cell_w = h + TITLE_PX, w + GAP_PX
    sheet = Image.new("RGB", (columns * cell_w - GAP_PX, rows * (cell_h + GAP_PX) - GAP_PX), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (title, image) in enumerate(panels):
        r, c = divmod(i, columns)
        x, y = c * cell_w, r * (cell_h + GAP_PX)
        pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        sheet.paste(Image.fromarray(pixels), (x, y + TITLE_PX))
        draw.text((x + 2, y + 1), title, fill=(235, 235, 235))
    return np.asarray(sheet)


@torch.no_grad()
def view_panels(
    images: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor,
    view_names: Sequence[str] = VIEWS, lights: Lights | None = None, backend: str = "auto",
    tol_mm: float = DEFAULT_VIS_TOL_MM,
) -> list[list[Panel]]:
    """The titled panels of every view's sheet (see the module docstring).

    Args:
        images: ``(V, 3, H, W)`` float in [0, 1], one subject's views.
        verts: ``(Nv, 3)`` model-space mm, or ``(V, Nv, 3)`` one mesh per view (a pinhole
            camera's pre-warped meshes, `renderer.camera.view_meshes`). faces: ``(F, 3)``.
            poses: ``(V, 6)``. view_names: names used in the titles.
    Returns:
        For each view, a list of ``(title, (H, W, 3) float image)``.
    """
    v, _, h, w = images.shape
    names = list(view_names)[:v] + [f"view{i}" for i in range(len(view_names), v)]
    pairs = all_pairs(v)
    verts_v = verts if verts.dim() == 3 else verts[None].expand(v, -1, -1)
    geometry = warp_geometry(verts_v[None], faces, poses[None], (h, w), pairs, backend=backend, tol_mm=tol_mm)
    warped, valid = sample_pairs(images[None], geometry)
    proj = project_with_depth(verts_v, poses)
    fragments = fragments_from_pix_to_face(geometry.pix_to_face, proj, faces.to(verts.device).long())
    grey = torch.full_like(verts_v, 0.75)
    shaded = render(verts_v, faces, grey, poses, (h, w), lights=lights, fragments=fragments)
    sheets = []
    for b in range(v):
        img = images[b]
        alpha = shaded[b, ..., 3:].permute(2, 0, 1)
        overlay = img * (1 - 0.6 * alpha) + 0.6 * alpha * shaded[b, ..., :3].permute(2, 0, 1)
        into_b = [p for p, (_, pb) in enumerate(pairs) if pb == b]
        err_sum = torch.zeros(h, w, device=images.device)
        err_n = torch.zeros(h, w, device=images.device)
        for p in into_b:
            m = valid[0, p, 0]
            err_sum += (warped[0, p] - img).abs().mean(0) * m
            err_n += m
        err = torch.where(err_n > 0, err_sum / err_n.clamp_min(1), torch.zeros_like(err_sum))
        has = err_n > 0
        mae = float(err[has].mean()) * 255.0 if bool(has.any()) else float("nan")
        err_img = heat(err.cpu().numpy()) * has.cpu().numpy()[..., None]
        panels: list[Panel] = [
            (f"{names[b]}: input", _to_hwc(img)),
            ("mesh overlay", _to_hwc(overlay)),
            ("visibility mask", _mask_rgb(geometry.covered[0, b])),
            (f"photometric err {mae:.1f}/255", err_img),
        ]
        for p in into_b:
            panels.append((f"co-visible in {names[pairs[p][0]]}", _mask_rgb(geometry.valid[0, p])))
        for p in into_b:
            panels.append((f"{names[pairs[p][0]]} -> {names[b]}", _to_hwc(warped[0, p])))
        sheets.append(panels)
    return sheets


def view_sheets(
    images: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor,
    view_names: Sequence[str] = VIEWS, lights: Lights | None = None, backend: str = "auto",
    tol_mm: float = DEFAULT_VIS_TOL_MM, extra_panels: Sequence[Sequence[Panel]] | None = None,
    columns: int = 4,
) -> list[np.ndarray]:
    """One uint8 ``(rows, cols, 3)`` sheet per view (see the module docstring).

    Args as `view_panels`; ``extra_panels[b]`` are ``(title, (H, W, 3) float)`` panels appended
    to view ``b``'s sheet. Write the sheets with `mvf.fileio.write_image`.
    """
    sheets = view_panels(images, verts, faces, poses, view_names, lights, backend, tol_mm)
    if extra_panels is not None:
        sheets = [list(s) + list(extra) for s, extra in zip(sheets, extra_panels)]
    return [compose(s, columns) for s in sheets]
