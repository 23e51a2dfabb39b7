"""Coarse-to-fine Lucas-Kanade optical flow, unrolled in torch and differentiable in both images.

The estimator works on luminance, on a pyramid of 2x2 means (mask-normalised, so invalid pixels
do not leak into coarser levels). On every level, coarse to fine, it repeats ``iterations`` times:

1. backward-warp image 2 and the validity mask by the current flow (one ``grid_sample``);
2. sum the Lucas-Kanade terms over ``window`` x ``window`` windows: the level is cut into cells
   of ``window // 3`` pixels and each window is 3x3 cells, sliding by one cell. The 2x2 matrix
   uses image 1's derivatives (fixed per level); the right-hand side uses the residual
   ``img2(p + flow) - img1(p)`` weighted by ``mask(p) * mask(p + flow)`` (the warped mask is 0
   outside the image);
3. solve ``(A + λI) du = -b + λ (window_mean(flow) - flow)`` per cell in closed form and add
   ``du``, linearly interpolated from cell centres to pixels.

λ = ``smoothness`` times the level's mean squared gradient (contrast invariant). Where a window
has no valid data (masked, flat or outside the image) the step pulls the flow to its window
mean, so such pixels take their flow from the neighbourhood, and coarse levels carry it over
large holes. Every step is a smooth torch expression (no ``no_grad``, no ``detach``, no in-place
ops on tracked tensors), so gradients reach both images.

Flow is in pixels of the level it lives on, channel 0 = u (x, right), channel 1 = v (y, down),
with ``img1(p) ≈ img2(p + flow(p))``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)


def to_gray(img: Tensor) -> Tensor:
    """``(N, 3, H, W)`` RGB (or ``(N, 1, H, W)``) -> ``(N, 1, H, W)`` luminance."""
    if img.shape[1] == 1:
        return img
    w = img.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def image_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences of ``(N, C, H, W)`` with replicated borders: (d/dx, d/dy) per pixel."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return gx, gy


def base_grid(n: int, h: int, w: int, like: Tensor) -> Tensor:
    """Pixel-centre coordinates ``(N, 2, H, W)``: x = j + 0.5, y = i + 0.5 (image frame, pixels)."""
    ys = torch.arange(h, dtype=like.dtype, device=like.device) + 0.5
    xs = torch.arange(w, dtype=like.dtype, device=like.device) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy)).unsqueeze(0).expand(n, 2, h, w)


def sample_at(img: Tensor, pos: Tensor) -> Tensor:
    """Bilinear samples of ``img`` ``(N, C, H, W)`` at pixel positions ``pos`` ``(N, 2, H', W')``.

    Positions are in the image frame (pixel centres at +0.5); outside the image the border is
    replicated. ``grid_sample`` with ``align_corners=False``.
    """
    h, w = img.shape[-2:]
    scale = pos.new_tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)
    grid = (pos * scale - 1.0).permute(0, 2, 3, 1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


def neighbour_product(m: Tensor) -> Tensor:
    """Product of the 4-neighbours of ``m`` ``(N, 1, H, W)`` (replicated border): 0 next to any
    fully invalid pixel, so weights times this exclude pixels whose central differences use one."""
    p = F.pad(m, (1, 1, 1, 1), mode="replicate")
    return p[..., 1:-1, :-2] * p[..., 1:-1, 2:] * p[..., :-2, 1:-1] * p[..., 2:, 1:-1]


def downsample(g: Tensor, m: Tensor | None, factor: int = 2) -> tuple[Tensor, Tensor | None]:
    """Shrink ``(N, C, H, W)`` images by ``factor`` x ``factor`` means; with validity weights ``m``
    ``(N, 1, H, W)`` the means count only valid pixels (normalised averaging), so invalid content
    does not leak into coarser levels. Returns the images and the shrunk weights (None if ``m``
    is None)."""
    if factor == 1:
        return g, m
    if m is None:
        return F.avg_pool2d(g, factor), None
    pooled = F.avg_pool2d(torch.cat((g * m, m), 1), factor)
    mc = pooled[:, -1:]
    return pooled[:, :-1] / mc.clamp_min(1e-3), mc


def resize_matrix(n_out: int, n_in: int, scale: float, like: Tensor) -> Tensor:
    """``(n_out, n_in)`` linear-interpolation matrix along one axis, ``align_corners=False`` style.

    Output pixel i reads input coordinate ``(i + 0.5) * scale - 0.5`` (clamped to the input), so
    ``scale = n_in / n_out`` is `F.interpolate`'s bilinear resize.
    """
    src = ((torch.arange(n_out, dtype=like.dtype, device=like.device) + 0.5) * scale - 0.5)
    src = src.clamp(0, n_in - 1)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = (src - i0.to(src.dtype)).unsqueeze(1)
    cols = torch.arange(n_in, device=like.device)
    return (1 - frac) * (cols == i0[:, None]) + frac * (cols == i1[:, None])


def cell_matrices(n: int, cell: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Along one axis of ``n`` pixels cut into ``ceil(n / cell)`` cells: (box ``(c, c)``: mean over
    the cell and its neighbours that exist, up ``(n, c)``: linear interpolation from cell centres
    to pixels)."""
    c = -(-n // cell)
    ci = torch.arange(c, device=like.device)
    box = ((ci[:, None] - ci[None, :]).abs() <= 1).to(like.dtype)
    box = box / box.sum(1, keepdim=True)
    return box, resize_matrix(n, c, 1.0 / cell, like)


def cell_mean(x: Tensor, cell: int, replicate: bool = False) -> Tensor:
    """Means of ``(N, C, H, W)`` over ``cell`` x ``cell`` blocks -> ``(N, C, ceil(H/cell), ceil(W/cell))``.

    Partial blocks at the bottom/right are padded with zeros (weights: no contribution) or, with
    ``replicate``, with the border values (flow)."""
    if cell == 1:
        return x
    n, c, h, w = x.shape
    ph, pw = (-h) % cell, (-w) % cell
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate" if replicate else "constant")
    return x.reshape(n, c, (h + ph) // cell, cell, (w + pw) // cell, cell).mean((3, 5))


def separable(x: Tensor, mh: Tensor, mw: Tensor) -> Tensor:
    """Apply ``mh`` ``(h', H)`` along rows and ``mw`` ``(w', W)`` along columns of ``(N, C, H, W)``."""
    return torch.matmul(mh, torch.matmul(x, mw.t()))


def resize_flow(flow: Tensor, size: tuple[int, int], factor: float) -> Tensor:
    """Resize flow ``(N, 2, h, w)`` to ``size`` where pixels shrink by ``factor`` (2 per pyramid
    level): bilinear, and the vectors are multiplied by ``factor``."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size) and factor == 1:
        return flow
    if factor > 1 and (h * factor, w * factor) == tuple(size):  # exact multiple: same mapping
        up = F.interpolate(flow, scale_factor=factor, mode="bilinear", align_corners=False)
        return up * factor
    mh = resize_matrix(size[0], h, 1.0 / factor, flow)
    mw = resize_matrix(size[1], w, 1.0 / factor, flow)
    return separable(flow, mh, mw) * factor


def lk_level(g1: Tensor, g2: Tensor, m: Tensor | None, flow: Tensor, iterations: int, window: int,
             smoothness: float) -> Tensor:
    """Refine ``flow`` ``(N, 2, H, W)`` on one pyramid level.

    g1, g2: ``(N, 1, H, W)`` luminance; m: ``(N, 1, H, W)`` validity weights in [0, 1] (shared
    frame of both images) or None (all valid). The LK sums run over 3x3 cells of
    ``window // 3`` pixels (sliding by one cell); the update is solved per cell and linearly
    interpolated back to the pixels. Returns the refined flow, pixels of this level.
    """
    n, _, h, w = g1.shape
    cell = max(1, window // 3)
    box_h, up_h = cell_matrices(h, cell, g1)
    box_w, up_w = cell_matrices(w, cell, g1)
    gx, gy = image_gradients(g1)
    if m is None:
        m = torch.ones_like(g1)
    else:
        m = m * neighbour_product(m)  # the derivative stencil must not reach into invalid pixels
    mgx, mgy = m * gx, m * gy
    # The 2x2 matrices use image 1's derivatives and mask only, so they are fixed per level
    # (image 2's warped validity enters the right-hand side; it changes the step length, not the
    # fixed point, which is where the weighted residual vanishes).
    sxx = separable(cell_mean(torch.cat((mgx * gx, mgx * gy, mgy * gy), 1), cell), box_h, box_w)
    # λ: smoothness x mean squared gradient (over valid pixels) of this level, per image.
    energy = (mgx * gx + mgy * gy).sum((1, 2, 3)) / (m.sum((1, 2, 3)) + 1e-6)
    lam = (smoothness * energy + 1e-6).view(n, 1, 1, 1)
    a, b, c = sxx[:, 0:1] + lam, sxx[:, 1:2], sxx[:, 2:3] + lam
    det = a * c - b * b
    # image 2 replicated and the mask zero-padded by one pixel: sampling them together gives the
    # warped image and a weight that falls linearly to 0 within one pixel outside the image.
    stack2 = torch.cat((F.pad(g2, (1, 1, 1, 1), mode="replicate"), F.pad(m, (1, 1, 1, 1))), 1)
    scale = g1.new_tensor([2.0 / (w + 2), 2.0 / (h + 2)]).view(1, 2, 1, 1)
    grid0 = (base_grid(n, h, w, g1) + 1.0) * scale - 1.0
    for _ in range(iterations):
        grid = (grid0 + flow * scale).permute(0, 2, 3, 1)
        s2 = F.grid_sample(stack2, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        res = s2[:, 1:2] * (s2[:, 0:1] - g1)
        rhs = separable(cell_mean(torch.cat((res * mgx, res * mgy), 1), cell), box_h, box_w)
        fc = cell_mean(flow, cell, replicate=True)
        pull = lam * (separable(fc, box_h, box_w) - fc)
        r1 = pull[:, 0:1] - rhs[:, 0:1]
        r2 = pull[:, 1:2] - rhs[:, 1:2]
        du = torch.cat((c * r1 - b * r2, a * r2 - b * r1), 1) / det
        flow = flow + separable(du, up_h, up_w)
    return flow


def pyramid_lk(img1: Tensor, img2: Tensor, mask: Tensor | None, levels: int, finest_level: int,
               iterations: int, window: int, smoothness: float, min_size: int = 8) -> Tensor:
    """Coarse-to-fine LK flow ``(N, 2, H, W)`` in pixels from ``img1`` to ``img2`` ``(N, C, H, W)``.

    mask: ``(N, 1, H, W)`` validity weights in [0, 1] or None. The pyramid halves the size
    (2x2 mean) per level; flow is estimated on levels ``finest_level .. finest_level + levels - 1``
    (0 = full resolution), dropping levels whose shorter side would be below ``min_size`` pixels,
    and linearly interpolated to full resolution.
    """
    n, _, h, w = img1.shape
    depth = 0  # deepest level whose shorter side is still >= min_size
    while min(h, w) >> (depth + 1) >= min_size:
        depth += 1
    first = min(finest_level, depth)
    used_levels = min(levels, depth - first + 1)
    m = None if mask is None else mask.to(img1.dtype)
    g, m = downsample(torch.cat((to_gray(img1), to_gray(img2)), 1), m, 2 ** first)
    used = [(g, m)]
    for _ in range(used_levels - 1):
        g, m = downsample(g, m)
        used.append((g, m))
    flow = g.new_zeros(n, 2, *g.shape[-2:])
    for gl, ml in reversed(used):
        size = tuple(gl.shape[-2:])
        flow = resize_flow(flow, size, 2.0 if tuple(flow.shape[-2:]) != size else 1.0)
        flow = lk_level(gl[:, 0:1], gl[:, 1:2], ml, flow, iterations, window, smoothness)
    return resize_flow(flow, (h, w), float(2 ** first))
