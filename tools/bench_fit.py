"""Benchmark test-time fitting: `mvf fit` on a real triplet, and vertex error on synthetic triplets.

    .venv/bin/python tools/bench_fit.py [--images ../shared/samples/triplet-1] [--synthetic 6]
        [--noise 0 1.5] [--photo-steps 20] [--threads 1] [--skip-real] [--json]

1. Real photos: runs ``mvf fit`` as a subprocess (so the wall time includes Python start-up,
   imports, model loading, mediapipe detection, fitting, texture and export) with the default
   settings, then with ``--set photo_steps=N`` (the optional cross-view phase). Reports the
   wall and CPU seconds, the per-stage seconds from ``timing.json`` and the mean landmark
   reprojection error (px at 224 px crops).
2. Synthetic triplets (mvf's generator, 224 px, seed 0): for each landmark noise level (px per
   coordinate, added to the true landmarks), the rigidly aligned vertex RMSE (mm, all vertices)
   of the mean face, of the landmark fit, and of the landmark fit followed by N cross-view steps.

Timings are wall-clock on a possibly shared machine; CPU seconds are steadier.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvf.align import aligned_rmse  # noqa: E402
from mvf.config import load_config  # noqa: E402
from mvf.face.model import FaceModel  # noqa: E402
from mvf.recon.fit import FitConfig, fit, fitted_landmarks  # noqa: E402


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(images: Path, extra: list[str], threads: int) -> dict:
    """One `mvf fit` subprocess: wall and CPU seconds, stage timings, landmark error."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mvf", "fit", "--images", str(images), "--out", tmp,
               "--threads", str(threads), *extra]
        cpu0, t0 = child_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, child_cpu() - cpu0
        if proc.returncode != 0:
            raise SystemExit(f"bench_fit: mvf fit failed: {proc.stderr.strip().splitlines()[-1:]}")
        timing = json.loads((Path(tmp) / "timing.json").read_text())
        params = json.loads((Path(tmp) / "params.json").read_text())
    return {"args": extra, "wall_s": wall, "cpu_s": cpu, "stages_s": timing,
            "landmark_error_px": params["landmark_error_px"],
            "landmark_error_per_view_px": params["landmark_error_per_view_px"]}


def synthetic(n: int, noises: list[float], photo_steps: int) -> list[dict]:
    """Vertex RMSE before/after fitting on ``n`` synthetic triplets per noise level."""
    from mvf.data.config import SynthConfig
    from mvf.data.synth import SynthGenerator

    model = FaceModel.load()
    gen = SynthGenerator(SynthConfig(), model, 224)
    subjects = gen.render([gen.draw(0, i) for i in range(n)])
    variants = {"landmarks": FitConfig(),
                f"landmarks+{photo_steps} cross-view": load_config(None, FitConfig, [f"photo_steps={photo_steps}"])}
    rows = []
    for noise in noises:
        g = torch.Generator().manual_seed(0)
        given = [torch.from_numpy(s.labels["landmarks"]) + noise * torch.randn(3, 68, 2, generator=g)
                 for s in subjects]
        row = {"noise_px": noise, "mean_face_mm": [], "seconds": {}}
        for s in subjects:
            row["mean_face_mm"].append(float(aligned_rmse(model.mean[None], torch.from_numpy(s.verts)[None])))
        for name, cfg in variants.items():
            errs, lm, secs = [], [], 0.0
            for s, lm_given in zip(subjects, given):
                images = torch.from_numpy(s.images).permute(0, 3, 1, 2).float() / 255.0
                vis = torch.from_numpy(s.labels["landmark_visible"]).float()
                t0 = time.perf_counter()
                result = fit(model, images, lm_given, vis, cfg)
                secs += time.perf_counter() - t0
                verts = model.decode(result.id[None], result.exp[None])
                errs.append(float(aligned_rmse(verts, torch.from_numpy(s.verts)[None])))
                d = (fitted_landmarks(model, result) - torch.from_numpy(s.labels["landmarks"])).norm(dim=-1)
                lm.append(float((d * vis).sum() / vis.sum()))
            row[name + "_mm"] = errs
            row[name + "_true_landmark_px"] = lm
            row["seconds"][name] = secs / len(subjects)
        rows.append(row)
    return rows


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "samples" / "triplet-1"))
    ap.add_argument("--synthetic", type=int, default=6, help="synthetic triplets (0: skip)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.5], help="landmark noise levels, px")
    ap.add_argument("--photo-steps", type=int, default=20, help="cross-view steps of the second variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {"threads": args.threads}
    if not args.skip_real:
        images = Path(args.images)
        out["real"] = [run_cli(images, [], args.threads),
                       run_cli(images, ["--set", f"photo_steps={args.photo_steps}"], args.threads)]
    if args.synthetic > 0:
        out["synthetic"] = synthetic(args.synthetic, args.noise, args.photo_steps)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for run in out.get("real", []):
        label = " ".join(run["args"]) or "defaults"
        print(f"\nmvf fit --images {args.images} ({label}): wall {run['wall_s']:.1f} s, CPU {run['cpu_s']:.1f} s, "
              f"landmark error {run['landmark_error_px']:.2f} px")
        print(f"  {'stage':<30}{'seconds':>8}")
        for k, v in run["stages_s"].items():
            if isinstance(v, (int, float)):
                print(f"  {k:<30}{v:>8.2f}")
    for row in out.get("synthetic", []):
        print(f"\nsynthetic triplets, landmark noise {row['noise_px']} px: vertex RMSE mm (mean over "
              f"{len(row['mean_face_mm'])}), true-landmark px, seconds per fit")
        print(f"  {'start / variant':<32}{'RMSE':>7}{'lm px':>8}{'s':>7}")
        print(f"  {'mean face':<32}{mean(row['mean_face_mm']):>7.2f}")
        for name, secs in row["seconds"].items():
            print(f"  {name:<32}{mean(row[name + '_mm']):>7.2f}{mean(row[name + '_true_landmark_px']):>8.2f}"
                  f"{secs:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
