"""Candidate lines for the view-dependent jawline (the silhouette search's input).

iBUG-68 jawline points 0-16 follow the face's outline as seen in each view, not fixed vertices.
The face model carries ``contour_lines`` ``(17, L)``: per jawline landmark, candidate vertices at
its height on its side, ordered from the front of the cheek round to the back (-1 padded).
`build_contour_lines` builds them; the search itself (rim candidates, the move onto the
silhouette) is `mvf.face.landmarks.rim_search`, used by `mvf.face.landmarks.LandmarkProjector`.
The chin (8) never moves.
"""
from __future__ import annotations

import torch

CHIN = 8
N_JAW = 17


def build_contour_lines(mean: torch.Tensor, faces: torch.Tensor, landmarks: torch.Tensor,
                        band_mm: float = 3.0, step_deg: float = 2.0, beyond_deg: float = 10.0,
                        axis_z_mm: float | None = None) -> torch.Tensor:
    """Dense candidate lines for the contour search, in the asset's ``contour_lines`` format.

    For jawline landmark ``k`` on side ``s``, the line holds, per ``step_deg`` bin of the
    angle ``atan2(|x|, z - axis_z)`` round a vertical axis, the vertex of that side closest to
    the landmark's height (within ``band_mm``), from the face's midline round to ``beyond_deg``
    past the landmark, ordered front to back and always including the landmark's own vertex.
    The chin (8) gets its own vertex only.

    Args:
        mean: ``(N, 3)`` mean shape, mm. faces: ``(F, 3)``. landmarks: ``(68,)`` vertex ids.
        axis_z_mm: depth of the vertical axis (default 20 mm behind the outer jaw landmarks).
    Returns:
        ``(17, L)`` long, -1 padded.
    """
    mean = mean.detach().cpu().double()
    used = torch.unique(faces.cpu())
    lm = mean[landmarks.cpu()]
    z0 = float(lm[[0, 16], 2].mean()) - 20.0 if axis_z_mm is None else axis_z_mm
    angle = torch.rad2deg(torch.atan2(mean[:, 0].abs(), mean[:, 2] - z0))
    lines: list[list[int]] = []
    for k in range(N_JAW):
        own = int(landmarks[k])
        if k == CHIN:
            lines.append([own])
            continue
        side = 1.0 if float(lm[k, 0]) > 0 else -1.0
        cand = used[(torch.sign(mean[used, 0]) == side) & ((mean[used, 1] - lm[k, 1]).abs() < band_mm)]
        a = angle[cand]
        stop = float(angle[own]) + beyond_deg
        cand, a = cand[a <= stop], a[a <= stop]
        bins = torch.floor(a / step_deg).long()
        chosen: dict[int, int] = {}
        for b in torch.unique(bins).tolist():
            in_bin = cand[bins == b]
            chosen[b] = int(in_bin[(mean[in_bin, 1] - lm[k, 1]).abs().argmin()])
        chosen[int(float(angle[own]) // step_deg)] = own  # the landmark replaces its bin's pick
        lines.append([chosen[b] for b in sorted(chosen)])
    width = max(len(line) for line in lines)
    out = torch.full((N_JAW, width), -1, dtype=torch.long)
    for k, line in enumerate(lines):
        out[k, : len(line)] = torch.as_tensor(line)
    return out
