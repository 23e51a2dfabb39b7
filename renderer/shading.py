"""Shading through PyTorch3D: `HardPhongShader` with `TexturesVertex`, run on our Fragments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from pytorch3d.renderer import BlendParams, DirectionalLights, HardPhongShader, TexturesVertex
from pytorch3d.renderer.mesh.rasterizer import Fragments
from pytorch3d.structures import Meshes

from renderer.camera import to_pytorch3d
from renderer.errors import RendererError
from renderer.raster import flatten_views, parse_image_size, rasterize

RGB = tuple[float, float, float]


@dataclass
class Lights:
    """Lambertian lighting fixed in model space (so shading is the same in every view).

    ambient: RGB ambient intensity. directional: ``(direction, rgb)`` pairs; ``direction``
    points from the surface towards the light, in model space (+x subject's left, +y up,
    +z out of the face). No specular term, so renders of one mesh agree across views.
    """

    ambient: RGB = (0.45, 0.45, 0.45)
    directional: list[tuple[RGB, RGB]] = field(
        default_factory=lambda: [((0.0, 0.35, 1.0), (0.6, 0.6, 0.6))])


def _pytorch3d_lights(lights: Lights, device: torch.device, dtype: torch.dtype) -> list[Any]:
    """One PyTorch3D `DirectionalLights` per directional light (ambient on the first only)."""
    def t(x):
        return torch.as_tensor(x, dtype=dtype, device=device).reshape(1, 3)

    zero = (0.0, 0.0, 0.0)
    pairs = list(lights.directional) or [((0.0, 0.0, 1.0), zero)]
    out = []
    for i, (direction, rgb) in enumerate(pairs):
        out.append(DirectionalLights(
            ambient_color=t(lights.ambient if i == 0 else zero), diffuse_color=t(rgb),
            specular_color=t(zero), direction=t(direction), device=device))
    return out


def render(
    verts: torch.Tensor, faces: torch.Tensor, colours: torch.Tensor, poses: torch.Tensor,
    image_size, lights: Lights | Any | None = None, backend: str = "auto",
    background: torch.Tensor | Sequence[float] | None = None, fragments: Fragments | None = None,
) -> torch.Tensor:
    """Render vertex-coloured meshes with PyTorch3D's `HardPhongShader`.

    Args:
        verts: ``(N, Nv, 3)`` or ``(B, V, Nv, 3)`` model-space mm (as `renderer.rasterize`).
        faces: ``(F, 3)`` long.
        colours: per-vertex albedo in [0, 1], ``(N, Nv, 3)``, ``(B, V, Nv, 3)`` or ``(1, Nv, 3)``.
        poses: ``(N, 6)`` or ``(B, V, 6)``.
        image_size: ``(H, W)``.
        lights: a `Lights` (default ``Lights()``) or any PyTorch3D lights object.
        backend: rasterizer backend (``auto``, ``fast``, ``pytorch3d``).
        background: RGB in [0, 1] (``(3,)``) or an image ``(N, H, W, 3)`` to composite over;
            default black.
        fragments: precomputed `rasterize` output for these meshes (skips rasterizing).
    Returns:
        ``(N, H, W, 4)`` RGBA in [0, 1]; alpha is the coverage mask. Differentiable with
        respect to ``verts``, ``colours`` and ``poses``.
    """
    image_size = parse_image_size(image_size)
    verts, poses = flatten_views(verts, poses)
    n = verts.shape[0]
    colours = colours.reshape(-1, *colours.shape[-2:]) if colours.dim() == 4 else colours
    if colours.dim() != 3 or colours.shape[0] not in (1, n) or colours.shape[1:] != verts.shape[1:]:
        raise RendererError(f"colours: expected ({n}, {verts.shape[1]}, 3), got {tuple(colours.shape)}")
    colours = colours.expand(n, -1, -1).to(verts.dtype)
    if fragments is None:
        fragments = rasterize(verts, faces, poses, image_size, backend=backend)
    faces = faces.to(verts.device).long()
    meshes = Meshes(verts=verts, faces=faces[None].expand(n, -1, -1),
                    textures=TexturesVertex(verts_features=colours))
    cameras = to_pytorch3d(poses, image_size)
    if lights is None:
        lights = Lights()
    passes = _pytorch3d_lights(lights, verts.device, verts.dtype) if isinstance(lights, Lights) else [lights]
    blend = BlendParams(background_color=(0.0, 0.0, 0.0))
    rgb = None
    for light in passes:
        shader = HardPhongShader(device=verts.device, cameras=cameras, lights=light, blend_params=blend)
        out = shader(fragments, meshes)[..., :3]
        rgb = out if rgb is None else rgb + out
    mask = (fragments.pix_to_face[..., :1] >= 0).to(rgb.dtype)  # (N, H, W, 1)
    if background is not None:
        bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
        rgb = rgb * mask + bg.expand_as(rgb) * (1.0 - mask)
    return torch.cat([rgb.clamp(0.0, 1.0), mask], -1)
