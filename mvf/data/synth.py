"""Synthetic multi-view faces with exact ground truth (``mvf synth``).

`SynthGenerator` turns `SubjectDraw`s into three rendered views plus labels, a batch of
subjects at a time, through `renderer.rasterize` and `renderer.interpolate_vertex_attr`:

1. decode the mesh (mm) from the drawn identity and expression;
2. per view, find the jawline's silhouette vertices (`mvf.face.landmarks.LandmarkProjector`), then choose the scale
   ``f`` and offset ``tx, ty`` so the 68-landmark box fills the drawn fraction of the image;
3. shade per vertex: albedo x (ambient + sum of Lambertian directional lights fixed in model
   space), so a surface point has the same colour in every view; the eye and mouth holes get
   caps (`mvf.data.caps`) that are scenery only;
4. rasterize, interpolate, composite over the background, blur and add sensor noise;
5. labels: landmarks are projections of the landmark vertices (jawline: the contour vertices of
   that view), ``landmark_visible`` a depth test at each landmark (for jawline points on the
   silhouette: not hidden by a nearer surface), ``masks`` the pixels whose nearest surface is a
   face-model triangle.

`generate` writes a dataset folder (`mvf.data.format`), resumably and deterministically.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from renderer.camera import perspective_prewarp, project, project_with_depth, rotate
from renderer.rotations import euler_to_matrix
from mvf.config import to_dict
from mvf.face.mesh import vertex_normals
from mvf.data.albedo import AlbedoFields
from mvf.data.background import gaussian_blur, make_background
from mvf.data.caps import HoleCaps
from mvf.data.config import SynthConfig
from mvf.data.format import (
    FORMAT_VERSION, check_compatible, read_index, subject_name, subject_verified, write_index,
    write_subject,
)
from mvf.data.sampling import SubjectDraw, sample_distractor, sample_subject
from mvf.errors import MvfError
from mvf.fileio import remove_temporaries
from renderer.views import VIEWS
from renderer import interpolate_vertex_attr, rasterize
from renderer.config import check_backend

REFERENCE_SIZE = 224  # blur sigmas in the config are pixels at this size
VIS_TOL_MM = 1.5
POOL_SIZE = 8  # distractor faces per dataset seed, for "face" backgrounds
# Bump when the same seed and settings would give different subjects (sampling or rendering
# changes), so that resuming never mixes two generator versions in one folder.
GENERATOR_VERSION = 1


@dataclass
class SubjectResult:
    """One rendered subject: ``images`` (V, H, W, 3) uint8, ``verts`` (Nv, 3) mm, ``labels``."""

    index: int
    images: np.ndarray
    verts: np.ndarray
    labels: dict[str, np.ndarray]


@torch.no_grad()
def point_visibility(fragments, proj: torch.Tensor, faces: torch.Tensor, uvd: torch.Tensor,
                     tol_mm: float = VIS_TOL_MM) -> torch.Tensor:
    """Depth test of a few points per view against the rasterized surface.

    A point passes when, at any of the 2 x 2 pixels around it, the covering face's plane,
    evaluated at the point's own ``(u, v)``, lies no more than ``tol_mm`` in front of it (the
    rule of `renderer.vertex_visibility`, evaluated only where needed).

    Args:
        fragments: rasterization of ``N`` meshes. proj: ``(N, Nv, 3)`` their projected vertices
        (u, v px, depth mm). faces: ``(F, 3)``. uvd: ``(N, M, 3)`` the points.
    Returns:
        ``(N, M)`` bool.
    """
    p2f = fragments.pix_to_face[..., 0]
    n, h, w = p2f.shape
    nv, nf = proj.shape[1], faces.shape[0]
    u, v, d = uvd.unbind(-1)
    x0, y0 = torch.floor(u - 0.5), torch.floor(v - 0.5)
    mesh = torch.arange(n, device=uvd.device)[:, None].expand_as(u)
    table = proj.reshape(-1, 3)
    out = torch.zeros_like(u, dtype=torch.bool)
    for dx in (0.0, 1.0):
        for dy in (0.0, 1.0):
            x, y = x0 + dx, y0 + dy
            inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
            xi = torch.where(inside, x, torch.zeros_like(x)).long()
            yi = torch.where(inside, y, torch.zeros_like(y)).long()
            face = p2f[mesh, yi, xi]
            ok = inside & (face >= 0)
            fid = face.clamp(min=0)
            m = fid // nf
            tri = table[faces[fid - m * nf] + (m * nv)[..., None]]  # (N, M, 3, 3)
            tu, tv, tz = tri.unbind(-1)
            area = (tu[..., 1] - tu[..., 0]) * (tv[..., 2] - tv[..., 0]) - (tu[..., 2] - tu[..., 0]) * (tv[..., 1] - tv[..., 0])
            b1 = ((u - tu[..., 0]) * (tv[..., 2] - tv[..., 0]) - (tu[..., 2] - tu[..., 0]) * (v - tv[..., 0])) / area
            b2 = ((tu[..., 1] - tu[..., 0]) * (v - tv[..., 0]) - (u - tu[..., 0]) * (tv[..., 1] - tv[..., 0])) / area
            depth = tz[..., 0] + b1 * (tz[..., 1] - tz[..., 0]) + b2 * (tz[..., 2] - tz[..., 0])
            out |= ok & (d <= depth + tol_mm)
    return out


@torch.no_grad()
def occluded(fragments, uvd: torch.Tensor, tol_mm: float = 3.0) -> torch.Tensor:
    """Whether nearer surfaces cover the whole 3 x 3 pixel neighbourhood of each point.

    For points on a silhouette (the jawline contour), whose own pixels may be empty or show
    what lies behind: they count as hidden only when every neighbouring pixel is covered by a
    surface more than ``tol_mm`` nearer than the point (z-buffer at the pixel centres).

    Args: fragments of ``N`` views; uvd ``(N, M, 3)`` points (u, v px, depth mm).
    Returns: ``(N, M)`` bool.
    """
    p2f, zbuf = fragments.pix_to_face[..., 0], fragments.zbuf[..., 0]
    n, h, w = p2f.shape
    u, v, d = uvd.unbind(-1)
    cx, cy = torch.floor(u), torch.floor(v)
    mesh = torch.arange(n, device=uvd.device)[:, None].expand_as(u)
    out = torch.ones_like(u, dtype=torch.bool)
    for dx in (-1.0, 0.0, 1.0):
        for dy in (-1.0, 0.0, 1.0):
            x, y = cx + dx, cy + dy
            inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
            xi = torch.where(inside, x, torch.zeros_like(x)).long()
            yi = torch.where(inside, y, torch.zeros_like(y)).long()
            covered = inside & (p2f[mesh, yi, xi] >= 0)
            out &= covered & (zbuf[mesh, yi, xi] < d - tol_mm)
    return out


class SynthGenerator:
    """Renders subjects of one model with one config at one image size."""

    def __init__(self, cfg: SynthConfig, model, size: int = 224, backend: str = "auto"):
        check_backend(backend)
        if size < 16:
            raise MvfError(f"--size {size}: images must be at least 16 px")
        self.cfg, self.model, self.size, self.backend = cfg, model, int(size), backend
        self.device = model.device
        self.caps = HoleCaps.from_model(model).to(self.device)
        self.fields = AlbedoFields.from_model(model)
        self.n_model_faces = model.faces.shape[0]
        self.faces_all = torch.cat([model.faces, self.caps.faces.to(self.device)], 0)
        self.exp_names = list(model.exp_names)
        self.projector = model.landmark_projector()  # iBUG-68, jawline on the silhouette
        self._pools: dict[int, list[np.ndarray]] = {}

    def draw(self, seed: int, index: int) -> SubjectDraw:
        """The random choices of subject ``index`` (see `mvf.data.sampling.sample_subject`)."""
        return sample_subject(seed, index, self.cfg, self.model.n_id, self.exp_names, self.fields,
                              pool_size=POOL_SIZE)

    # ------------------------------------------------------------------ geometry and framing
    def _decode(self, draws: list[SubjectDraw]) -> torch.Tensor:
        """``(B, Nv, 3)`` meshes; decoded one by one so results do not depend on the batch."""
        out = []
        for d in draws:
            idc = torch.as_tensor(d.id, device=self.device)[None]
            exc = torch.as_tensor(d.exp, device=self.device)[None]
            out.append(self.model.decode(idc, exc))
        return torch.cat(out, 0)

    def _frame(self, verts: torch.Tensor, angles: torch.Tensor, fill: torch.Tensor, shift: torch.Tensor,
               size: int):
        """Poses ``(N, 6)`` placing each view's landmark box (``N = B V``; meshes ``(B, Nv, 3)``),
        the landmarks' 3D points ``(N, 68, 3)``, vertex ids ``(N, 68)`` and on-silhouette flags."""
        zeros = torch.zeros_like(angles[:, :1])
        pose0 = torch.cat([torch.ones_like(zeros), angles, zeros, zeros], 1)
        b = verts.shape[0]
        choice = self.projector.select(verts, pose0.reshape(b, -1, 6))
        pts = self.projector.points(verts, choice).flatten(0, 1)
        ids = self.projector.vertex_ids[choice.tri[..., 0]].flatten(0, 1)
        on_sil = choice.on_silhouette.flatten(0, 1)
        uv0 = project(pts, pose0)
        lo, hi = uv0.min(1).values, uv0.max(1).values
        extent = (hi - lo).max(-1).values
        f = fill * size / extent
        t = size * (0.5 + shift) - f[:, None] * (lo + hi) / 2
        poses = torch.cat([f[:, None], angles, t], 1)
        return poses, pts, ids, on_sil

    def _scene(self, verts: torch.Tensor, normals: torch.Tensor, draws: list[SubjectDraw],
               poses: torch.Tensor | None = None):
        """Scene vertices ``(B, Nt, 3)`` (model + caps) and their lit colours: ``(B, Nt, 3)`` for
        lights fixed to the head, ``(B, V, Nt, 3)`` for lights fixed to the camera
        (``lighting.frame`` "camera", given the views' ``poses`` ``(B * V, 6)``)."""
        cap_v = self.caps.vertices(verts, normals)
        cap_n = self.caps.normals(verts, normals)
        all_v = torch.cat([verts, cap_v], 1)
        all_n = torch.cat([normals, cap_n], 1)
        dev = verts.device
        albedo = torch.stack([torch.as_tensor(np.concatenate([
            d.albedo.colours, self.caps.colours(d.albedo.iris, d.albedo.sclera, d.albedo.mouth)]))
            for d in draws]).to(dev)
        amb = torch.stack([torch.as_tensor(d.lighting.ambient) for d in draws]).to(dev)
        dirs = torch.stack([torch.as_tensor(d.lighting.directions) for d in draws]).to(dev)
        cols = torch.stack([torch.as_tensor(d.lighting.colours) for d in draws]).to(dev)
        dirs = torch.nn.functional.normalize(dirs, dim=-1)
        per_view = poses is not None and self.cfg.lighting.frame == "camera"
        if per_view:  # each view's camera-space directions in model space (B, V, L, 3)
            dirs = dirs[:, None] @ euler_to_matrix(poses[:, 1:4].to(dirs.dtype)).reshape(len(draws), -1, 3, 3)
        else:
            dirs = dirs[:, None]  # (B, 1, L, 3): one lighting for all views
        lambert = (all_n[:, None] @ dirs.transpose(-1, -2)).clamp(min=0.0)  # (B, V | 1, Nt, L)
        colours = albedo[:, None] * (amb[:, None, None] + lambert @ cols[:, None])  # (B, V | 1, Nt, 3)
        return all_v, colours if per_view else colours[:, 0]

    def _raster(self, all_v: torch.Tensor, colours: torch.Tensor, poses: torch.Tensor, size: int, views: int,
                distances: torch.Tensor | None = None, ref_depth: torch.Tensor | None = None):
        """Rasterize ``views`` poses per scene: fragments, per-view scene vertices ``(N, Nt, 3)`` (as
        drawn: pre-warped for a pinhole camera at ``distances`` ``(N,)`` mm from ``ref_depth``
        ``(N,)``, `renderer.camera.perspective_prewarp`, where a distance is > 0), RGB
        ``(N, H, W, 3)``, alpha, face mask."""
        b, nt = all_v.shape[:2]
        vv = all_v[:, None].expand(b, views, nt, 3).reshape(b * views, nt, 3)
        if distances is not None and bool((distances > 0).any()):
            warped = perspective_prewarp(vv, poses, distances.clamp_min(1.0), ref_depth)
            vv = torch.where((distances > 0)[:, None, None], warped, vv)
        cv = (colours if colours.dim() == 4 else colours[:, None].expand(b, views, nt, 3)).reshape(b * views, nt, 3)
        fr = rasterize(vv, self.faces_all, poses, (size, size), backend=self.backend)
        rgb = interpolate_vertex_attr(fr, cv, self.faces_all)
        p2f = fr.pix_to_face[..., 0]
        alpha = p2f >= 0
        face_mask = alpha & (p2f % self.faces_all.shape[0] < self.n_model_faces)
        return fr, vv, rgb, alpha, face_mask

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render(self, draws: list[SubjectDraw]) -> list[SubjectResult]:
        """Render a batch of subjects (3 views each) with their labels."""
        if not draws:
            return []
        size, n_views, b = self.size, len(VIEWS), len(draws)
        verts = self._decode(draws)
        normals = vertex_normals(verts, self.model.faces)
        t = lambda key: torch.as_tensor(np.stack([getattr(d, key) for d in draws]), device=self.device)  # noqa: E731
        poses, pts, lm_ids, on_sil = self._frame(
            verts, t("angles").reshape(-1, 3), t("fill").reshape(-1),
            t("shift").reshape(-1, 2), size)
        all_v, colours = self._scene(verts, normals, draws, poses)
        distances = t("camera_distance_mm").float().repeat_interleave(n_views)  # (N,), 0: weak perspective
        ref_depth = rotate(pts, poses).mean(1)[:, 2]  # the landmarks' mean depth: magnification f
        fr, vv, rgb, alpha, face_mask = self._raster(all_v, colours, poses, size, n_views, distances, ref_depth)
        if bool((distances > 0).any()):  # landmarks where the pinhole camera sees them
            pts = torch.where((distances > 0)[:, None, None],
                              perspective_prewarp(pts, poses, distances.clamp_min(1.0), ref_depth), pts)

        landmarks = project(pts, poses)
        proj = project_with_depth(vv, poses)
        uvd = project_with_depth(pts, poses)
        visible = point_visibility(fr, proj, self.faces_all, uvd)
        # jawline points on the silhouette: visible unless something nearer hides them
        visible = torch.where(on_sil, ~occluded(fr, uvd), visible)

        faces_bg = self._distractors(draws)
        images = self._composite(draws, rgb, alpha, faces_bg)

        out = []
        for i, d in enumerate(draws):
            sl = slice(i * n_views, (i + 1) * n_views)
            labels = {
                "id": d.id.astype(np.float32), "exp": d.exp.astype(np.float32),
                "pose": poses[sl].cpu().numpy().astype(np.float32),
                "landmarks": landmarks[sl].cpu().numpy().astype(np.float32),
                "landmark_visible": visible[sl].cpu().numpy(),
                "masks": face_mask[sl].cpu().numpy(),
                "colours": d.albedo.colours.astype(np.float32),
                "jaw_vertex_ids": lm_ids[sl, :17].cpu().numpy().astype(np.int32),
                "jaw_on_silhouette": on_sil[sl, :17].cpu().numpy(),
                "light_ambient": d.lighting.ambient, "light_directions": d.lighting.directions,
                "light_colours": d.lighting.colours,
            }
            if d.camera_distance_mm > 0:  # pinhole renders; poses are the weak-perspective camera at
                labels["camera_distance_mm"] = np.float32(d.camera_distance_mm)  # the landmarks' depth
            out.append(SubjectResult(d.index, images[sl], verts[i].cpu().numpy(), labels))
        return out

    def _distractors(self, draws: list[SubjectDraw]) -> dict[int, np.ndarray]:
        """The pool images that this batch's "face" backgrounds cut from, by subject index.

        Each dataset seed has a pool of `POOL_SIZE` half-size renders of other random faces,
        made once on first use; a subject picks one with its own generator, so its background
        depends on the dataset seed and its own draws only.
        """
        out = {}
        for d in draws:
            if d.background == "face":
                out[d.index] = self._pool(d.seed)[d.distractor]
        return out

    def _pool(self, seed: int) -> list[np.ndarray]:
        if seed not in self._pools:
            others = [sample_distractor(seed, k, self.cfg, self.model.n_id, self.exp_names, self.fields)
                      for k in range(POOL_SIZE)]
            size = max(32, self.size // 2)
            verts = self._decode(others)
            normals = vertex_normals(verts, self.model.faces)
            t = lambda key: torch.as_tensor(np.stack([getattr(d, key) for d in others]), device=self.device)  # noqa: E731
            poses = self._frame(verts, t("angles").reshape(-1, 3), t("fill").reshape(-1),
                                t("shift").reshape(-1, 2), size)[0]
            all_v, colours = self._scene(verts, normals, others)
            _, _, rgb, alpha, _ = self._raster(all_v, colours, poses, size, 1)
            images = []
            for k, d in enumerate(others):
                bg = torch.from_numpy(make_background("gradient", np.random.default_rng(d.background_seed), size))
                a = alpha[k, ..., None].to(rgb.dtype).cpu()
                images.append((rgb[k].cpu() * a + bg * (1 - a)).numpy())
            self._pools[seed] = images
        return self._pools[seed]

    def _composite(self, draws: list[SubjectDraw], rgb: torch.Tensor, alpha: torch.Tensor,
                   faces_bg: dict[int, np.ndarray]) -> np.ndarray:
        """Backgrounds, blur and noise: ``(N, H, W, 3)`` uint8."""
        n_views, size = len(VIEWS), self.size
        backgrounds, noise = [], []
        for d in draws:
            rng = np.random.default_rng(d.background_seed)
            for v in range(n_views):
                backgrounds.append(make_background(d.background, rng, size, faces_bg.get(d.index)))
            for v in range(n_views):
                std = float(d.noise[v])
                noise.append(rng.standard_normal((size, size, 3), dtype=np.float32) * std if std > 0 else None)
        bg = torch.from_numpy(np.stack(backgrounds))
        a = alpha[..., None].to(rgb.dtype).cpu()
        img = rgb.cpu() * a + bg * (1 - a)  # (N, H, W, 3)
        out = np.empty((len(draws) * n_views, size, size, 3), np.uint8)
        for i, d in enumerate(draws):
            for v in range(n_views):
                k = i * n_views + v
                x = gaussian_blur(img[k].permute(2, 0, 1), float(d.blur[v]) * size / REFERENCE_SIZE).permute(1, 2, 0)
                if noise[k] is not None:
                    x = x + torch.from_numpy(noise[k])
                out[k] = (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
        return out


# ---------------------------------------------------------------------- dataset writing
def dataset_settings(cfg: SynthConfig, model, seed: int, size: int) -> dict:
    """The index fields that a resumed run must match."""
    return {
        "format_version": FORMAT_VERSION, "generator_version": GENERATOR_VERSION,
        "generator": to_dict(cfg), "seed": int(seed),
        "size": int(size),
        "model": {"asset_id": model.asset_id, "region": model.region, "n_id": model.n_id,
                  "n_exp": model.n_exp},
        "jawline": "silhouette contour search (mvf.face.contour) on build_contour_lines candidates",
    }


@dataclass
class GenerateStats:
    """What `generate` did: subjects made, skipped (already complete), seconds."""

    made: int
    skipped: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.made / self.seconds if self.seconds > 0 else float("nan")


def generate(out: str | Path, n_subjects: int, seed: int, cfg: SynthConfig, model, size: int = 224,
             batch: int = 8, workers: int = 2, backend: str = "auto", compress_level: int = 1,
             progress: bool = True, subjects: list[int] | None = None) -> GenerateStats:
    """Write (or complete) a synthetic dataset of subjects ``0 .. n_subjects - 1`` in ``out``.

    Verified subjects (`mvf.data.format.subject_verified`: checksums of the ``done.json``
    marker, or decoding for a marker-less subject of an older version) are skipped; any other
    (missing, truncated, altered) is made again, byte-identical to an uninterrupted run. Files
    are written atomically, the marker last; the index lists every verified subject.
    ``subjects`` restricts the run to those indices.
    """
    from tqdm import tqdm

    out = Path(out)
    if n_subjects < 0 or batch < 1 or workers < 0:
        raise MvfError("--subjects must be >= 0, --batch >= 1 and --workers >= 0")
    settings = dataset_settings(cfg, model, seed, size)
    existing: list[str] = []
    if (out / "index.json").is_file():
        index = read_index(out)
        check_compatible(index, settings, out / "index.json")
        existing = [s for s in index["subjects"] if subject_verified(out / s)]
    elif out.exists() and any(out.iterdir()):
        raise MvfError(f"{out}: folder exists and is not a synthetic dataset (no index.json); "
                       "choose an empty or new --out folder")
    wanted = list(range(n_subjects)) if subjects is None else list(subjects)
    verified = set(existing)
    todo = [i for i in wanted if subject_name(i) not in verified and not subject_verified(out / subject_name(i))]
    done = set(existing) | {subject_name(i) for i in wanted if i not in set(todo)}
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)  # a killed run's (subject folders: when their subject is made again)
    write_index(out, {**settings, "subjects": sorted(done)})

    gen = SynthGenerator(cfg, model, size=size, backend=backend)
    faces = model.faces.cpu().numpy()
    start = time.perf_counter()
    bar = tqdm(total=len(wanted), initial=len(wanted) - len(todo), unit="subject",
               disable=not progress, desc="synth")
    pending: list[tuple[str, Future | None]] = []
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None

    def finish(keep: int) -> None:
        while len(pending) > keep:
            name, fut = pending.pop(0)
            if fut is not None:
                fut.result()
            done.add(name)
            bar.update(1)

    try:
        for b0 in range(0, len(todo), batch):
            for r in gen.render([gen.draw(seed, i) for i in todo[b0:b0 + batch]]):
                name = subject_name(r.index)
                args = (out / name, r.images, r.verts, faces, r.labels, compress_level)
                pending.append((name, pool.submit(write_subject, *args) if pool else write_subject(*args)))
            finish(keep=2 * batch)
        finish(keep=0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()
        write_index(out, {**settings, "subjects": sorted(done)})
    return GenerateStats(made=len(todo), skipped=len(wanted) - len(todo),
                         seconds=time.perf_counter() - start)
