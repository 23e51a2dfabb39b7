"""Eye and mouth fillers for rendering: the face-region mesh has holes there.

The ICT face region is open at the eyes (no eyeballs) and between the lips (no mouth socket),
so a render would show the background through them. `HoleCaps` closes each of these boundary
loops with extra triangles (concentric rings towards the loop's centre): an eyeball-like disc
(sclera, iris, pupil) and a dark mouth cavity. Cap vertices are recomputed from the posed
loop vertices, so caps follow expressions (blinks, open mouths). They are scenery: never part
of the ground-truth mesh, masks or landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Ordered vertex loops of the mesh boundary (edges used by one triangle only).

    Each loop runs in the direction of its triangles' edges. Returns a list of ``(L,)`` arrays.
    """
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, 1)
    _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    nxt = {int(a): int(b) for a, b in edges[counts[inv.reshape(-1)] == 1]}
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(np.asarray(loop, np.int64))
    return loops


@dataclass
class CapLoop:
    """One filled hole: its boundary ``loop`` (L,) and ring radii (mm, None = the loop itself)."""

    kind: str  # "eye" or "mouth"
    loop: np.ndarray
    rings: tuple[float | None, ...]
    depth: float  # centre offset along the outward normal, mm (negative = recessed)


# Rings of the eye disc, outside in: lid margin, sclera, iris edge, pupil edge; then the centre.
EYE_RINGS = (None, 8.0, 6.0, 2.4)
MOUTH_RINGS = (None,)


class HoleCaps:
    """Cap geometry for a face model's eye and mouth holes.

    Build once per model with `HoleCaps.from_model`; `vertices` maps posed model vertices to
    cap vertices, and `faces` (offset by the model's vertex count) triangulates them.
    """

    def __init__(self, loops: list[CapLoop], n_model_verts: int):
        self.loops = loops
        self.n_model_verts = n_model_verts
        faces, offset = [], n_model_verts
        self.slices: dict[str, list[slice]] = {"eye": [], "mouth": []}
        for cap in loops:
            n, r = len(cap.loop), len(cap.rings)
            ring_ids = offset + np.arange(n * r).reshape(r, n)
            centre = offset + n * r
            for k in range(r - 1):  # quads between ring k and ring k + 1, split in two
                a, b = ring_ids[k], np.roll(ring_ids[k], -1)
                c, d = np.roll(ring_ids[k + 1], -1), ring_ids[k + 1]
                faces.append(np.stack([a, b, c], 1))
                faces.append(np.stack([a, c, d], 1))
            last = ring_ids[-1]
            faces.append(np.stack([last, np.roll(last, -1), np.full(n, centre)], 1))
            self.slices[cap.kind].append(slice(offset, centre + 1))
            offset = centre + 1
        self.n_cap_verts = offset - n_model_verts
        # Boundary loops run opposite to the hole's outward orientation; flip to face outwards.
        self.faces = torch.as_tensor(np.concatenate(faces)[:, ::-1].copy(), dtype=torch.long)

    @classmethod
    def from_model(cls, model) -> "HoleCaps":
        """Find the eye and mouth loops of ``model`` (a `FaceModel`) from its mean shape."""
        faces = model.faces.cpu().numpy()
        mean = model.mean.cpu().numpy()
        lm = mean[model.landmarks.cpu().numpy()]
        eye_r, eye_l, mouth = lm[36:42].mean(0), lm[42:48].mean(0), lm[60:68].mean(0)
        loops = []
        for loop in boundary_loops(faces):
            c = mean[loop].mean(0)
            extent = np.ptp(mean[loop], 0).max()
            if extent > 60.0:  # the outer border of the face region
                continue
            dists = {k: np.linalg.norm(c - p) for k, p in (("eye_r", eye_r), ("eye_l", eye_l), ("mouth", mouth))}
            kind = min(dists, key=dists.get)
            if dists[kind] > 20.0:
                continue
            if kind == "mouth":
                loops.append(CapLoop("mouth", loop, MOUTH_RINGS, depth=-6.0))
            else:
                loops.append(CapLoop("eye", loop, EYE_RINGS, depth=1.0))
        return cls(loops, mean.shape[0])

    def to(self, device) -> "HoleCaps":
        self.faces = self.faces.to(device)
        return self

    def vertices(self, verts: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Cap vertex positions for posed meshes.

        Args:
            verts: ``(B, Nv, 3)`` model vertices, mm. normals: ``(B, Nv, 3)`` their unit normals.
        Returns:
            ``(B, n_cap_verts, 3)`` mm, in the order `faces` expects.
        """
        out = []
        for cap in self.loops:
            ids = torch.as_tensor(cap.loop, device=verts.device)
            p = verts[:, ids]  # (B, L, 3)
            c = p.mean(1, keepdim=True)
            n = torch.nn.functional.normalize(normals[:, ids].mean(1, keepdim=True), dim=-1)
            d = p - c
            dist = d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            for radius in cap.rings:
                if radius is None:
                    out.append(p)
                else:
                    out.append(c + d * (radius / dist).clamp(max=1.0) + 0.5 * cap.depth * n)
            out.append(c + cap.depth * n)
        return torch.cat(out, 1)

    def normals(self, verts: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Shading normals of the cap vertices ``(B, n_cap_verts, 3)``: each cap's mean normal."""
        out = []
        for cap in self.loops:
            ids = torch.as_tensor(cap.loop, device=verts.device)
            n = torch.nn.functional.normalize(normals[:, ids].mean(1, keepdim=True), dim=-1)
            out.append(n.expand(-1, len(cap.loop) * len(cap.rings) + 1, -1))
        return torch.cat(out, 1)

    def colours(self, eye_colour: np.ndarray, sclera: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        """Cap vertex albedo ``(n_cap_verts, 3)``: sclera/iris/pupil discs and a dark mouth.

        Args: eye_colour ``(3,)`` iris; sclera ``(3,)``; mouth ``(3,)`` cavity colour (the
        centre is darker still).
        """
        out = []
        for cap in self.loops:
            n = len(cap.loop)
            if cap.kind == "eye":
                ring_cols = [sclera * 0.7, sclera, eye_colour, eye_colour * 0.6]
                centre = np.array([0.03, 0.03, 0.03])
            else:
                ring_cols = [mouth]
                centre = mouth * 0.25
            for col in ring_cols:
                out.append(np.repeat(np.asarray(col, np.float32)[None], n, 0))
            out.append(np.asarray(centre, np.float32)[None])
        return np.concatenate(out).astype(np.float32)
