"""Benchmark the flow estimator: forward and forward+backward time for N flow fields.

    .venv/bin/python tools/bench_flow.py [--sizes 128 224] [--batches 48 96] [--repeats 3]
        [--threads T] [--levels L --finest-level F --iterations I --window W] [--json]

Each case times ``flow = F(img1, img2, mask)`` on N pairs of smooth random images (img2 = img1
shifted by a random sub-pixel translation), then ``flow_magnitude_loss(flow, mask).backward()``
into both images; the median over ``--repeats`` runs is reported, with the mean end-point error
against the true translation as a sanity check. Wall times are noisy on a shared machine; the
process CPU time (all threads) is the steadier figure with ``--threads 1``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvf.losses.flow import FlowConfig, build_flow, flow_magnitude_loss, warp_image  # noqa: E402


def make_pairs(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth random images ``(n, 3, size, size)``, their shifted copies and the true flow."""
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(n, 3, size // 8 + 3, size // 8 + 3, generator=g)
    img1 = F.interpolate(big, size=(size + 24, size + 24), mode="bicubic", align_corners=False)
    img1 = img1.clamp(0, 1)
    shift = (torch.rand(n, 2, 1, 1, generator=g) * 6.0 - 3.0)
    img2 = warp_image(img1, -shift.expand(n, 2, size + 24, size + 24))
    crop = (slice(None), slice(None), slice(12, 12 + size), slice(12, 12 + size))
    return img1[crop].contiguous(), img2[crop].contiguous(), shift.expand(n, 2, size, size)


def run_case(est: torch.nn.Module, n: int, size: int, repeats: int) -> dict:
    img1, img2, truth = make_pairs(n, size)
    mask = torch.ones(n, 1, size, size)
    fwd, total, cpu = [], [], []
    epe = float("nan")
    for _ in range(repeats + 1):  # first run warms up
        a = img1.clone().requires_grad_(True)
        b = img2.clone().requires_grad_(True)
        c0 = time.process_time()
        t0 = time.perf_counter()
        flow = est(a, b, mask)
        t1 = time.perf_counter()
        flow_magnitude_loss(flow, mask).backward()
        t2 = time.perf_counter()
        cpu.append(time.process_time() - c0)
        fwd.append(t1 - t0)
        total.append(t2 - t0)
        inner = (flow.detach() - truth)[..., 16:-16, 16:-16]
        epe = inner.norm(dim=1).mean().item()
    fwd_s, tot_s = statistics.median(fwd[1:]), statistics.median(total[1:])
    return {"size": size, "n": n, "forward_s": fwd_s, "fwd_bwd_s": tot_s,
            "fwd_bwd_cpu_s": statistics.median(cpu[1:]),
            "fields_per_s": n / tot_s, "epe_px": epe}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--batches", type=int, nargs="+", default=[48, 96])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    d = FlowConfig()
    ap.add_argument("--levels", type=int, default=d.levels)
    ap.add_argument("--finest-level", type=int, default=d.finest_level)
    ap.add_argument("--iterations", type=int, default=d.iterations)
    ap.add_argument("--window", type=int, default=d.window)
    ap.add_argument("--smoothness", type=float, default=d.smoothness)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FlowConfig(levels=args.levels, finest_level=args.finest_level,
                     iterations=args.iterations, window=args.window, smoothness=args.smoothness)
    est = build_flow(cfg)
    rows = [run_case(est, n, s, args.repeats) for s in args.sizes for n in args.batches]
    meta = {"method": cfg.method, "levels": cfg.levels, "finest_level": cfg.finest_level,
            "iterations": cfg.iterations, "window": cfg.window, "smoothness": cfg.smoothness,
            "threads": torch.get_num_threads(), "repeats": args.repeats}
    if args.json:
        print(json.dumps({"config": meta, "results": rows}, indent=2))
        return 0
    print("flow bench: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    print(f"{'size':>5} {'N':>4} {'fwd s':>8} {'fwd+bwd s':>10} {'cpu s':>7} {'fields/s':>9} "
          f"{'EPE px':>7}")
    for r in rows:
        print(f"{r['size']:>5} {r['n']:>4} {r['forward_s']:>8.3f} {r['fwd_bwd_s']:>10.3f} "
              f"{r['fwd_bwd_cpu_s']:>7.3f} {r['fields_per_s']:>9.1f} {r['epe_px']:>7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
