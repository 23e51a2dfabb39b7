"""Renderer settings that a config file can override, and backend selection."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from renderer.errors import RendererError

BACKENDS = ("auto", "fast", "pytorch3d")

# Default depth tolerance (mm) of the visibility tests: a point counts as visible when it lies
# no more than this far behind the visible surface. Occluders on a face (nose, cheeks, chin)
# are many millimetres in front of what they hide, while plane-extrapolated depths on one
# smooth surface agree to a fraction of a millimetre at 64-224 px.
DEFAULT_VIS_TOL_MM = 1.5


@dataclass
class RendererConfig:
    """Renderer options for configs (``renderer:`` section).

    backend: ``auto`` (``fast`` on CPU, ``pytorch3d`` on CUDA), ``fast`` or ``pytorch3d``.
    vis_tol_mm: depth tolerance of vertex visibility, co-visibility and warp validity, mm.
    """

    backend: str = "auto"
    vis_tol_mm: float = DEFAULT_VIS_TOL_MM

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if not self.vis_tol_mm >= 0.0:
            raise RendererError(f"renderer.vis_tol_mm: must be >= 0, got {self.vis_tol_mm}")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names a backend, else raise `RendererError`."""
    if backend not in BACKENDS:
        raise RendererError(f"renderer backend '{backend}': unknown (choose from {', '.join(BACKENDS)})")
    return backend


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend (``fast`` or ``pytorch3d``) for ``backend`` on ``device``."""
    check_backend(backend)
    if backend != "auto":
        return backend
    return "pytorch3d" if torch.device(device).type == "cuda" else "fast"
