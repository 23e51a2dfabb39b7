"""Benchmark the rasterizer backends and the cross-view warp on the face model at 224 x 224.

Usage: .venv/bin/python tools/bench_raster.py [--json] [--threads N] [--ref-views K] [--repeats R]

For 1 view and for 8 triplets (24 views) it times the `fast` and `pytorch3d` backends on the
CPU (best of ``--repeats``; PyTorch3D once) and reports the speed-up, the fraction of pixels
where ``pix_to_face`` agrees, the coverage IoU and the largest ``zbuf`` difference on agreeing
pixels. ``--ref-views K`` runs PyTorch3D on only the first K views of the 24-view batch (its
CPU rasterizer is linear in the number of views) and scales its time by 24 / K; the table says
so. It then times the 6-pair cross-view warp for 8 triplets, forward and backward, both with
rasterization included and with precomputed fragments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from renderer.camera import make_pose  # noqa: E402
from mvf.face.model import FaceModel  # noqa: E402
from renderer import ALL_PAIRS, cross_view_warp, rasterize  # noqa: E402

SIZE = 224
TRIPLETS = 8


def triplet_poses(n: int, g: torch.Generator) -> torch.Tensor:
    """``(n, 3, 6)`` front/left/right poses with random jitter, framing the face at 224 px."""
    f = 0.62 * SIZE / 224.0
    ty = SIZE / 2 - 20.0 * f
    base = torch.stack([make_pose(f, 0, 0, 0, SIZE / 2, ty), make_pose(f, 8, -38, 3, SIZE / 2, ty),
                        make_pose(f, 8, 38, -3, SIZE / 2, ty)])
    jitter = torch.randn(n, 3, 6, generator=g) * torch.tensor([0.03, 0.08, 0.12, 0.05, 4.0, 4.0])
    return base[None] + jitter


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall and CPU seconds over ``repeats`` calls, and the last result."""
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def compare(fast, ref) -> dict:
    a, b = fast.pix_to_face[..., 0], ref.pix_to_face[..., 0]
    agree = a == b
    both = agree & (a >= 0)
    union = ((a >= 0) | (b >= 0)).sum().item()
    inter = ((a >= 0) & (b >= 0)).sum().item()
    dz = (fast.zbuf[..., 0] - ref.zbuf[..., 0])[both].abs()
    return {"pix_to_face_agreement": agree.float().mean().item(), "coverage_iou": inter / max(union, 1),
            "max_zbuf_diff_mm": dz.max().item() if dz.numel() else 0.0}


def bench_raster(model: FaceModel, poses: torch.Tensor, ref_views: int, repeats: int) -> dict:
    n = poses.shape[0]
    verts = model.mean[None].expand(n, -1, -1)
    with torch.no_grad():
        t_fast, c_fast, fast = timed(lambda: rasterize(verts, model.faces, poses, SIZE, backend="fast"), repeats)
        k = min(ref_views, n)
        t_ref, c_ref, ref = timed(
            lambda: rasterize(verts[:k], model.faces, poses[:k], SIZE, backend="pytorch3d"), 1)
    scale = n / k
    row = {"views": n, "fast_s": t_fast, "fast_cpu_s": c_fast, "pytorch3d_s": t_ref * scale,
           "pytorch3d_cpu_s": c_ref * scale, "pytorch3d_views_run": k,
           "speedup": t_ref * scale / t_fast, "speedup_cpu": c_ref * scale / c_fast}
    sub = type(fast)(pix_to_face=fast.pix_to_face[:k], zbuf=fast.zbuf[:k], bary_coords=fast.bary_coords[:k],
                     dists=None)
    row.update(compare(sub, ref))
    return row


def bench_warp(model: FaceModel, poses: torch.Tensor, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(TRIPLETS, 3, 3, SIZE, SIZE, generator=g)
    targets = images[:, [b for _, b in ALL_PAIRS]]
    verts0 = model.mean[None] + torch.randn(TRIPLETS, 1, 3, generator=g)

    def step(fragments=None):
        verts = verts0.clone().requires_grad_()
        p = poses.clone().requires_grad_()
        warped, valid = cross_view_warp(images, verts, model.faces, p, fragments=fragments)
        loss = ((warped - targets).abs() * valid).sum() / valid.sum().clamp_min(1)
        loss.backward()
        return float(valid.mean())

    t_full, c_full, cover = timed(step, repeats)
    with torch.no_grad():
        frags = rasterize(verts0[:, None].expand(-1, 3, -1, -1), model.faces, poses, SIZE)
    t_pre, c_pre, _ = timed(lambda: step(frags), repeats)
    return {"triplets": TRIPLETS, "pairs": len(ALL_PAIRS), "fwd_bwd_s": t_full, "fwd_bwd_cpu_s": c_full,
            "fwd_bwd_precomputed_fragments_s": t_pre, "fwd_bwd_precomputed_fragments_cpu_s": c_pre,
            "valid_fraction": cover}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ref-views", type=int, default=24,
                        help="views of the 24-view batch to run PyTorch3D on (time scaled to 24)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats for the fast paths")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = FaceModel.load()
    g = torch.Generator().manual_seed(0)
    poses = triplet_poses(TRIPLETS, g)
    flat = poses.reshape(-1, 6)
    result = {
        "image_size": SIZE, "faces": int(model.faces.shape[0]), "threads": torch.get_num_threads(),
        "raster": [bench_raster(model, flat[:1], 1, args.repeats),
                   bench_raster(model, flat, args.ref_views, args.repeats)],
        "warp": bench_warp(model, poses, args.repeats),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"rasterization, {result['faces']} faces at {SIZE}x{SIZE}, CPU, {result['threads']} thread(s)")
    print("| views | fast s (cpu) | pytorch3d s (cpu) | speed-up wall (cpu) | pix_to_face agree | coverage IoU | max zbuf diff mm |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in result["raster"]:
        note = "" if r["pytorch3d_views_run"] == r["views"] else f" [{r['pytorch3d_views_run']} run, scaled]"
        print(f"| {r['views']} | {r['fast_s']:.3f} ({r['fast_cpu_s']:.3f}) | {r['pytorch3d_s']:.2f} "
              f"({r['pytorch3d_cpu_s']:.2f}){note} | {r['speedup']:.0f}x ({r['speedup_cpu']:.0f}x) | "
              f"{100 * r['pix_to_face_agreement']:.3f}% | {r['coverage_iou']:.5f} | {r['max_zbuf_diff_mm']:.2e} |")
    w = result["warp"]
    print(f"\ncross-view warp, {w['triplets']} triplets x {w['pairs']} ordered pairs at {SIZE}px, forward + backward")
    print("| what | wall s | cpu s |")
    print("| --- | --- | --- |")
    print(f"| rasterize + warp + backward | {w['fwd_bwd_s']:.3f} | {w['fwd_bwd_cpu_s']:.3f} |")
    print(f"| warp + backward (precomputed fragments) | {w['fwd_bwd_precomputed_fragments_s']:.3f} | "
          f"{w['fwd_bwd_precomputed_fragments_cpu_s']:.3f} |")
    print(f"valid fraction of warped pixels: {w['valid_fraction']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
