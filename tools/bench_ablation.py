"""Ablation of the self-supervised stage on a shifted domain (issue 6).

    .venv/bin/python tools/bench_ablation.py --checkpoint runs/cpu/step-0001500.pt [--steps 100] [--json]

From one supervised checkpoint, continue ``--steps`` steps in four ways, with the same batch size,
learning rate (Adam, constant), seed and network:

  (a) supervised: more supervised steps on the checkpoint's supervised data (labelled, the
      original domain; its loss weights);
  (b) self-supervised, photometric only  } on unlabelled triplets of a shifted domain
  (c) self-supervised, flow only         } (configs/synth_shifted.yaml: other lights, albedo,
  (d) photometric + flow + landmarks     } backgrounds, expressions, yaw 50-80 deg), landmarks =
                                           its 2D ground truth (a landmark file's stand-in)
  (e) landmarks only (a control, not run by default: ``--arms abcde``): what (d) owes to the
      2D landmarks rather than to the photometric and flow terms

(b)-(e) also carry the coefficient prior. Each arm, and the start, is evaluated on a held-out
set of the shifted domain: vertex RMSE mm (rigid alignment, face region; also similarity),
landmark px (model input pixels), photometric error (Charbonnier distance on the eroded
co-visible inner-face pixels of all six view pairs, in 1/255) and pose error (degrees).

The shifted sets are made once with ``mvf synth --config configs/synth_shifted.yaml`` into
``<cache>/shifted-{train,heldout}-s<seed>-n<N>-<px>`` (seeds 6061 / 6062: no other run uses
them; ``--cache`` defaults to data/bench), at the supervised data's image size (as stored, so
that only the generator settings differ; ~3-4 minutes the first time at 224 px) and resized to
the model's input like the supervised data.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_SEED = 6061  # shifted unlabelled training triplets
HELDOUT_SEED = 6062  # shifted held-out evaluation triplets
ARMS = {
    "a": "supervised (original domain)",
    "b": "self-sup photometric",
    "c": "self-sup flow",
    "d": "self-sup photo + flow + landmarks",
    "e": "self-sup landmarks only (control)",
}


def ensure_shifted(path: Path, subjects: int, seed: int, size: int) -> None:
    """Render the shifted-domain set with `mvf synth` unless it is already complete."""
    index = path / "index.json"
    if index.is_file() and len(json.loads(index.read_text()).get("subjects", [])) >= subjects:
        return
    cmd = [sys.executable, "-m", "mvf", "synth", "--config", str(ROOT / "configs" / "synth_shifted.yaml"),
           "--out", str(path), "--subjects", str(subjects), "--seed", str(seed), "--size", str(size), "--quiet"]
    print("generating:", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    if subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode != 0:
        sys.exit(f"bench_ablation: `mvf synth` failed for {path}")


def stored_size(root: Path, default: int) -> int:
    """Image size of a synthetic dataset (its index.json), or ``default`` if unreadable."""
    try:
        return int(json.loads((root / "index.json").read_text())["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def arm_stage(arm: str, sup, args, train_root: Path):
    """The one stage an arm trains: a copy of the checkpoint's supervised stage for (a), a
    self_supervised stage on the shifted triplets for (b)-(e)."""
    from mvf.train.config import DataConfig, LossWeights, StageConfig

    common = dict(lr=args.lr, schedule="constant", warmup_steps=0, batch_size=args.batch, steps=args.steps,
                  epochs=None, max_minutes=None, grad_clip=None)
    if arm == "a":
        stage = copy.deepcopy(sup)
        for k, v in common.items():
            setattr(stage, k, v)
        stage.name = "a_supervised"
        stage.data.max_subjects = None
        return stage
    w = {"b": dict(photometric=args.w_photo), "c": dict(flow=args.w_flow),
         "d": dict(photometric=args.w_photo, flow=args.w_flow, landmark=args.w_landmark),
         "e": dict(landmark=args.w_landmark)}[arm]
    return StageConfig(name=f"{arm}_self_supervised", kind="self_supervised", data=DataConfig(root=str(train_root)),
                       loss=LossWeights(prior=args.w_prior, **w), **common)


def photometric_error(net, loader, ctx) -> float:
    """Mean cross-view photometric error (1/255) of the network's predictions over ``loader``."""
    import torch

    from mvf.losses.selfsup import CrossViewConfig, cross_view_losses, inner_face_region
    from mvf.train.validation import to_device

    region = inner_face_region(ctx.face)
    was_training = net.training
    net.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, ctx.device)
            out = net(batch["images"])
            verts = ctx.face.decode(out["id"], out["exp"])
            res = cross_view_losses(batch["images"], verts, ctx.face.faces, out["pose"], CrossViewConfig(),
                                    region=region)
            b = batch["images"].shape[0]
            total += float(res.photometric) * b
            n += b
    net.train(was_training)
    return 255.0 * total / max(n, 1)


def brief(row: dict) -> str:
    return (f"RMSE {row['rmse_mm']:.3f} mm, landmarks {row['landmark_px']:.2f} px, "
            f"photometric {row['photometric_255']:.2f}/255, pose {row['pose_deg']:.2f} deg")


def evaluate_net(net, loader, ctx) -> dict:
    from mvf.train.validation import evaluate

    s = evaluate(net, loader, ctx).summary()
    return {"rmse_mm": s["rmse_mm"], "rmse_sim_mm": s["rmse_sim_mm"], "landmark_px": s["landmark_px"],
            "pose_deg": s["pose_deg"], "photometric_255": photometric_error(net, loader, ctx)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a supervised checkpoint (.pt) from `mvf train`")
    ap.add_argument("--steps", type=int, default=100, help="extra steps per arm (default 100)")
    ap.add_argument("--batch", type=int, default=8, help="batch size of every arm (default 8)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of every arm (default 1e-4)")
    ap.add_argument("--w-photo", type=float, default=1.0, help="photometric weight, (b) and (d)")
    ap.add_argument("--w-flow", type=float, default=0.01,
                    help="flow alignment weight, (c) and (d) (default 0.01: at 0.05 flow alone drifted off)")
    ap.add_argument("--w-landmark", type=float, default=0.05, help="landmark weight (px), (d) and (e)")
    ap.add_argument("--w-prior", type=float, default=0.025, help="coefficient prior weight, (b)-(e)")
    ap.add_argument("--train-subjects", type=int, default=240, help="shifted unlabelled triplets")
    ap.add_argument("--heldout-subjects", type=int, default=48, help="shifted held-out triplets")
    ap.add_argument("--supervised-data", default=None, help="data of arm (a) (default: the checkpoint's)")
    ap.add_argument("--size", type=int, default=None,
                    help="px the shifted sets are rendered at (default: as the supervised data)")
    ap.add_argument("--cache", default=str(ROOT / "data" / "bench"), help="folder of the shifted sets")
    ap.add_argument("--arms", default="abcd", help="which arms to run (default abcd; e: landmarks-only control)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader

    from mvf.data import SynthDataset
    from mvf.errors import MvfError
    from mvf.net.checkpoint import load_model
    from mvf.train import checkpoint as ckpt_io
    from mvf.train.config import config_from_dict, validate
    from mvf.train.loop import Trainer, build_context

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch < 1 or not set(args.arms) <= set(ARMS):
        sys.exit("bench_ablation: need --steps >= 1, --batch >= 1 and --arms from 'abcde'")
    try:
        start = load_model(args.checkpoint)
        ckpt = ckpt_io.load_checkpoint(args.checkpoint)
    except MvfError as e:
        sys.exit(f"bench_ablation: error: {e}")
    base = config_from_dict(start.config)
    size = base.model.image_size
    sups = [st for st in base.stages if st.kind == "supervised"]
    if not sups:
        sys.exit(f"bench_ablation: error: {args.checkpoint}: its config has no supervised stage")
    position = (ckpt.get("position") or {}).get("stage", 0)
    if base.stages[min(position, len(base.stages) - 1)].kind != "supervised":
        print(f"warning: {args.checkpoint} was saved during stage '{base.stages[position].name}', not a "
              "supervised one (use the step checkpoint at the end of the supervised stage)", file=sys.stderr)
    sup = copy.deepcopy(sups[0])
    if args.supervised_data:
        sup.data.root = args.supervised_data
    px = args.size or stored_size(Path(sup.data.root), size)
    bench = Path(args.cache)
    train_root = bench / f"shifted-train-s{TRAIN_SEED}-n{args.train_subjects}-{px}"
    held_root = bench / f"shifted-heldout-s{HELDOUT_SEED}-n{args.heldout_subjects}-{px}"
    ensure_shifted(train_root, args.train_subjects, TRAIN_SEED, px)
    ensure_shifted(held_root, args.heldout_subjects, HELDOUT_SEED, px)

    held = SynthDataset(held_root, views=tuple(base.model.views), size=size)
    loader = DataLoader(held, batch_size=16, shuffle=False)
    ctx = build_context(base, torch.device("cpu"), start.net, start.face)
    results = [{"arm": "start", "name": "supervised checkpoint", "steps": 0, "seconds": 0.0,
                **evaluate_net(start.net, loader, ctx)}]
    print(f"start: {brief(results[0])}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="mvf-ablation-") as tmp:
        for arm in args.arms:
            cfg = copy.deepcopy(base)
            cfg.model.pretrained = None  # the weights come from the checkpoint
            cfg.stages = [arm_stage(arm, sup, args, train_root)]
            cfg.validation.root, cfg.validation.val_fraction = str(held_root), 0.0
            cfg.device, cfg.threads = "cpu", args.threads
            cfg.tensorboard, cfg.progress, cfg.pictures_every = False, False, None
            cfg.checkpoint_every, cfg.log_every = 10 ** 9, 10
            try:
                trainer = Trainer(validate(cfg), Path(tmp) / arm, quiet=True)
                ckpt_io.load_model_state(trainer.net, ckpt["model"], args.checkpoint)
                t0 = time.perf_counter()
                trainer.run()
                seconds = time.perf_counter() - t0
            except MvfError as e:
                sys.exit(f"bench_ablation: error: arm ({arm}): {e}")
            row = {"arm": arm, "name": ARMS[arm], "steps": args.steps, "seconds": seconds,
                   **evaluate_net(trainer.net, loader, trainer.ctx)}
            results.append(row)
            print(f"({arm}) {ARMS[arm]}: {args.steps} steps in {seconds:.0f} s: {brief(row)}", file=sys.stderr,
                  flush=True)

    by = {r["arm"]: r for r in results}
    verdict = None
    if "a" in by and "d" in by:
        verdict = 100.0 * (by["d"]["rmse_mm"] / by["a"]["rmse_mm"] - 1.0)
    report = {"checkpoint": str(args.checkpoint), "checkpoint_step": start.step, "train_data": str(train_root),
              "heldout_data": str(held_root), "heldout_subjects": len(held), "steps": args.steps,
              "batch": args.batch, "lr": args.lr,
              "weights": {"photometric": args.w_photo, "flow": args.w_flow, "landmark": args.w_landmark,
                          "prior": args.w_prior},
              "threads": torch.get_num_threads(), "results": results, "d_vs_a_rmse_percent": verdict}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"checkpoint {args.checkpoint} (step {start.step}); +{args.steps} steps per arm at batch {args.batch}, "
          f"lr {args.lr:g}; held-out shifted domain: {held_root.name} ({len(held)} subjects)\n")
    print("| arm | continued with | vertex RMSE mm | vs (a) | sim. RMSE mm | landmark px | photometric /255 "
          "| pose deg | train s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rel = f"{100.0 * (r['rmse_mm'] / by['a']['rmse_mm'] - 1.0):+.1f}%" if "a" in by else "-"
        print(f"| {r['arm']} | {r['name']} | {r['rmse_mm']:.3f} | {rel} | {r['rmse_sim_mm']:.3f} | "
              f"{r['landmark_px']:.2f} | {r['photometric_255']:.2f} | {r['pose_deg']:.2f} | {r['seconds']:.0f} |")
    if verdict is not None:
        print(f"\n(d) vs (a) vertex RMSE: {verdict:+.1f}% (target: -10% or better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
