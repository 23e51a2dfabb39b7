"""Random but smooth per-vertex colours, for synthetic renders whose warps are checkable."""
from __future__ import annotations

import torch


def smooth_random_colours(verts: torch.Tensor, generator: torch.Generator | None = None,
                          wavelength_mm: float = 60.0, waves: int = 4) -> torch.Tensor:
    """Per-vertex RGB in [0.1, 0.9] varying smoothly over the surface.

    Each channel is a sum of ``waves`` plane waves of the model-space position with random
    directions, phases and wavelengths around ``wavelength_mm``. Smooth colours make
    bilinear resampling nearly exact, so warps of renders can be checked to a few levels.

    Args:
        verts: ``(Nv, 3)`` model-space mm.
        generator: random source (CPU generator).
    Returns:
        ``(Nv, 3)`` float in [0.1, 0.9], on ``verts``' device and dtype.
    """
    g = generator
    dirs = torch.nn.functional.normalize(torch.randn(3, waves, 3, generator=g), dim=-1)
    scale = wavelength_mm * (0.7 + 0.6 * torch.rand(3, waves, 1, generator=g))
    phase = 2 * torch.pi * torch.rand(3, waves, generator=g)
    k = (2 * torch.pi * dirs / scale).to(verts)  # (3 channels, waves, 3)
    arg = torch.einsum("nd,cwd->ncw", verts, k) + phase.to(verts)
    return 0.5 + 0.4 * torch.sin(arg).mean(-1)
