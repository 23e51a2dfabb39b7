"""Accuracy of a trained checkpoint on a held-out synthetic set that no training run uses.

    .venv/bin/python tools/bench_accuracy.py --checkpoint runs/cpu/best.pt [--json]

The held-out set (default 60 subjects, seed 9999, 224 px) is generated with `mvf synth` into
``data/bench/heldout-s9999-n60`` the first time. Reports the vertex RMSE in mm on the face
region after rigid alignment (mean, median, 90th percentile; plus the similarity-aligned mean),
the landmark error in px (in the network's input pixels and in the held-out images' pixels),
the pose error in degrees, the inference time per triplet (batch 1, after warm-up), and for
reference the RMSE of predicting the mean face for everyone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELDOUT_SEED = 9999  # no training config uses this seed


def ensure_heldout(path: Path, subjects: int, seed: int, size: int) -> None:
    """Generate the held-out set with `mvf synth` unless it is already complete."""
    index = path / "index.json"
    if index.is_file() and len(json.loads(index.read_text()).get("subjects", [])) >= subjects:
        return
    cmd = [sys.executable, "-m", "mvf", "synth", "--out", str(path), "--subjects", str(subjects),
           "--seed", str(seed), "--size", str(size)]
    print("generating the held-out set:", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    if subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode != 0:
        sys.exit(f"bench_accuracy: `mvf synth` failed for {path}")


def mean_face_rmse(ds, ctx) -> float:
    """Mean rigid vertex RMSE (mm) of predicting the mean face for every held-out subject."""
    import torch

    from mvf.align import aligned_rmse
    from mvf.data.format import read_labels

    errs = []
    for name in ds.subjects:
        labels = read_labels(ds.root / name / "labels.npz")
        gt = ctx.face.decode(torch.from_numpy(labels["id"])[None], torch.from_numpy(labels["exp"])[None])
        errs.append(float(aligned_rmse(ctx.face.mean[None], gt, ctx.region)[0]))
    return sum(errs) / len(errs)


def landmark_branch_diagnostics(net, loader, ctx) -> dict:
    """For networks with a landmark branch: the landmark head's own 2D error (px, model input),
    the rigid vertex RMSE (mm) the geometry branch reaches when fed the *true* 2D landmarks, and
    the RMSE of the landmark refinement (`mvf.recon.refine`) on the true landmarks: upper bounds on
    what better landmarks alone could give."""
    import torch

    from mvf.align import aligned_rmse
    from mvf.recon.refine import refine_with_landmarks, settings_for

    head_err, oracle, oracle_fit = [], [], []
    with torch.no_grad():
        for batch in loader:
            out = net(batch["images"])
            head_err.append((out["landmarks"] - batch["landmarks"]).norm(dim=-1).mean((1, 2)))
            geo = net(None, landmarks=batch["landmarks"])
            gt = ctx.face.decode(batch["id"], batch["exp"])
            oracle.append(aligned_rmse(ctx.face.decode(geo["id"], geo["exp"]), gt, ctx.region))
            fitted = refine_with_landmarks(ctx.face, {**out, "landmarks": batch["landmarks"]},
                                           settings_for(net.cfg))
            oracle_fit.append(aligned_rmse(ctx.face.decode(fitted["id"], fitted["exp"]), gt, ctx.region))
    return {"landmark_head_px": float(torch.cat(head_err).mean()),
            "oracle_landmarks_rmse_mm": float(torch.cat(oracle).mean()),
            "oracle_refine_rmse_mm": float(torch.cat(oracle_fit).mean())}


def with_refine(model, refine: str):
    """``model`` (a `mvf.net.checkpoint.LoadedModel`) with ``model.refine`` replaced."""
    model_cfg = dataclasses.replace(model.cfg, refine=refine)
    model.net.cfg = model_cfg
    return dataclasses.replace(model, cfg=model_cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint (.pt) from `mvf train`")
    ap.add_argument("--data", default=None, help="held-out dataset folder (default data/bench/heldout-s<seed>-n<N>)")
    ap.add_argument("--subjects", type=int, default=60, help="held-out subjects (>= 50)")
    ap.add_argument("--seed", type=int, default=HELDOUT_SEED)
    ap.add_argument("--size", type=int, default=224, help="image size of the held-out set")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--timing-runs", type=int, default=20, help="single-triplet forward passes timed")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--refine", choices=["none", "landmarks"], default=None,
                    help="override the checkpoint's model.refine (landmark-head networks)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from mvf.data import SynthDataset
    from mvf.errors import MvfError
    from mvf.face.landmarks import LandmarkProjector
    from mvf.losses.supervised import face_region
    from mvf.net.checkpoint import load_model
    from mvf.train.config import config_from_dict
    from mvf.recon.refine import predict
    from mvf.train.stages import LossContext
    from mvf.train.detector_sim import detector_batch, network_inputs
    from mvf.train.validation import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else ROOT / "data" / "bench" / f"heldout-s{args.seed}-n{args.subjects}"
    try:
        ensure_heldout(data, args.subjects, args.seed, args.size)
        model = load_model(args.checkpoint)
        if args.refine is not None:
            if args.refine == "landmarks" and not model.cfg.landmark_head:
                raise MvfError(f"{args.checkpoint}: --refine landmarks needs a network with a landmark head")
            model = with_refine(model, args.refine)
        cfg = dataclasses.replace(config_from_dict(model.config), model=model.cfg)
        ds = SynthDataset(data, views=tuple(cfg.model.views), size=cfg.model.image_size)
    except MvfError as e:
        sys.exit(f"bench_accuracy: error: {e}")
    ctx = LossContext(face=model.face, projector=LandmarkProjector(model.face), pose_norm=model.net.pose_norm,
                      region=face_region(model.face, cfg.validation.face_radius_mm), model_cfg=cfg.model,
                      device=torch.device("cpu"))
    loader = DataLoader(ds, batch_size=args.batch, shuffle=False)
    result = evaluate(model.net, loader, ctx, refine=True)
    summary = result.summary()
    refined = cfg.model.refine != "none"
    regression = evaluate(model.net, loader, ctx).summary() if refined else summary
    baseline = mean_face_rmse(ds, ctx)
    stored = int(ds.index["size"])

    times = []
    with torch.no_grad():
        for i in range(min(args.timing_runs, len(ds)) + 2):
            item = ds[i % len(ds)]
            sample = detector_batch(ctx, {k: item[k][None] for k in ("images", "id", "exp", "pose")})
            x, extra = sample["images"], network_inputs(sample)  # detector input: simulated detections
            t0 = time.perf_counter()
            predict(model.net, model.face, x, **extra)
            if i >= 2:  # warm-up
                times.append(time.perf_counter() - t0)
    report = {
        "checkpoint": str(args.checkpoint), "step": model.step, "data": str(data), "subjects": len(ds),
        "backbone": cfg.model.backbone, "image_size": cfg.model.image_size, "fusion": cfg.model.fusion,
        "views": list(cfg.model.views), "refine": cfg.model.refine,
        "rmse_mm_mean": summary["rmse_mm"], "rmse_mm_median": summary["rmse_median_mm"],
        "rmse_mm_p90": summary["rmse_p90_mm"], "rmse_similarity_mm_mean": summary["rmse_sim_mm"],
        "landmark_px": summary["landmark_px"],
        f"landmark_px_at_{stored}": summary["landmark_px"] * stored / cfg.model.image_size,
        "pose_deg": summary["pose_deg"], "mean_face_rmse_mm": baseline,
        "regression_rmse_mm_mean": regression["rmse_mm"], "regression_landmark_px": regression["landmark_px"],
        "inference_ms_per_triplet": 1000.0 * float(np.median(times)) if times else float("nan"),
        "threads": torch.get_num_threads(),
    }
    if cfg.model.landmark_head and getattr(model.net, "geometry", None) is not None:
        report.update(landmark_branch_diagnostics(model.net, loader, ctx))  # the head's landmarks
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"checkpoint {report['checkpoint']} (step {report['step']}; {report['backbone']} "
          f"{report['image_size']} px, {report['fusion']} fusion, views {'/'.join(report['views'])}, "
          f"refine {report['refine']})")
    print(f"held-out set {data} ({report['subjects']} subjects, seed {args.seed})\n")
    rows = [
        ("vertex RMSE, rigid, mean (mm)", report["rmse_mm_mean"]),
        ("vertex RMSE, rigid, median (mm)", report["rmse_mm_median"]),
        ("vertex RMSE, rigid, p90 (mm)", report["rmse_mm_p90"]),
        ("vertex RMSE, similarity, mean (mm)", report["rmse_similarity_mm_mean"]),
        (f"landmark error, {cfg.model.image_size} px input (px)", report["landmark_px"]),
        (f"landmark error, in the {stored} px images (px)", report[f"landmark_px_at_{stored}"]),
        ("pose error (deg)", report["pose_deg"]),
        ("inference per triplet (ms)", report["inference_ms_per_triplet"]),
        ("reference: mean face, rigid RMSE (mm)", report["mean_face_rmse_mm"]),
    ]
    if refined:
        rows += [("network regression alone (no refinement), rigid RMSE (mm)", report["regression_rmse_mm_mean"]),
                 ("network regression alone, landmark error (px)", report["regression_landmark_px"])]
    if "oracle_landmarks_rmse_mm" in report:
        rows += [(f"landmark head's 2D error, {cfg.model.image_size} px input (px)", report["landmark_head_px"]),
                 ("reference: geometry branch on the true 2D landmarks, rigid RMSE (mm)",
                  report["oracle_landmarks_rmse_mm"]),
                 ("reference: landmark refinement on the true 2D landmarks, rigid RMSE (mm)",
                  report["oracle_refine_rmse_mm"])]
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric':<{width}} | value |\n|{'-' * (width + 2)}|------:|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
