"""`mvf reconstruct`: a trained network turns front/left/right images into a face mesh."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reconstruct", help="3D face from front/left/right images: a trained network and/or test-time fitting",
        description="With --checkpoint, images are square crops in the training framing (like `mvf synth` output; --crop none) or photos (--crop detect). Without a checkpoint, photos are reconstructed by test-time fitting (see `mvf fit`). "
                    "Writes mesh.obj (with UVs), mesh.ply, params.json (id, exp, per-view pose in the "
                    "input images' pixels) and <view>_overlay.png. A concat-fusion model needs all "
                    "three views; mean/attention models take any of them (e.g. --front alone).")
    p.add_argument("--checkpoint", metavar="PT",
                   help="checkpoint from `mvf train`; without one, photos are reconstructed by test-time "
                        "fitting (landmarks, crop, fit, texture)")
    p.add_argument("--crop", choices=["auto", "detect", "none"], default="auto",
                   help="detect landmarks and crop MVF-Net style (detect), or take inputs already in the "
                        "training framing (none); auto = none with --checkpoint, detect without")
    p.add_argument("--refine-steps", type=int, default=0, metavar="N",
                   help="test-time fitting steps after the network's prediction (implies landmarks)")
    p.add_argument("--fit-config", metavar="YAML", help="fitting settings (mvf.recon.fit.FitConfig keys)")
    p.add_argument("--auto-order", action="store_true",
                   help="reassign photos whose detected yaw contradicts their slot")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for photo reconstruction (default 1, as `mvf fit`)")
    for v in ("front", "left", "right"):
        p.add_argument(f"--{v}-landmarks", metavar="FILE", help=f"68 landmarks for the {v} image (.pts/.npy)")
    p.add_argument("--front", metavar="IMG", help="front view image")
    p.add_argument("--left", metavar="IMG", help="left view (the subject's left cheek)")
    p.add_argument("--right", metavar="IMG", help="right view (the subject's right cheek)")
    p.add_argument("--images", metavar="DIR", help="folder with front/left/right.<png|jpg>")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    crop = args.crop if args.crop != "auto" else ("none" if args.checkpoint else "detect")
    if args.checkpoint is None or crop == "detect" or args.refine_steps > 0:
        return run_photos(args, crop)
    from mvf.recon.pipeline import check_views, gather_views, load_model, read_views, reconstruct, write_outputs
    from renderer.views import VIEWS

    paths = gather_views(args.front, args.left, args.right, args.images)
    model = load_model(args.checkpoint, args.device)
    check_views(model.net, tuple(v for v in VIEWS if v in paths), args.images or "inputs")
    images = read_views(paths)
    rec = reconstruct(model, images)
    written = write_outputs(rec, images, model.face, args.out,
                            extra={"checkpoint": str(args.checkpoint), "checkpoint_step": model.step})
    print(f"reconstructed from {', '.join(rec.views)} in {rec.seconds * 1000:.0f} ms -> "
          f"{len(written)} files in {args.out} (mesh.obj, mesh.ply, params.json, overlays)")
    return 0


def run_photos(args: argparse.Namespace, crop: str) -> int:
    """Photos -> landmarks -> crops -> (network prediction) -> fitting -> texture -> outputs."""
    import time
    from pathlib import Path

    import numpy as np

    from mvf.commands.fit import view_paths
    from mvf.config import load_config
    from mvf.errors import MvfError
    from mvf.face.model import FaceModel
    from mvf.recon.fit import FitConfig
    from mvf.recon.photos import prepare_views, print_timing, reconstruct_photos

    import torch

    if args.threads < 1:
        raise MvfError(f"--threads {args.threads}: must be >= 1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    paths, lm_files = view_paths(args)
    cfg = load_config(args.fit_config, FitConfig)
    init = None
    net = None
    if args.checkpoint:
        from mvf.recon.pipeline import check_views, load_model

        net = load_model(args.checkpoint, args.device)
        check_views(net.net, tuple(v for v in ("front", "left", "right") if v in paths), args.images or "inputs")
        face = net.face
        cfg.landmark_steps = args.refine_steps
        if args.refine_steps == 0:
            cfg.photo_steps = 0
    else:
        face = FaceModel.load()
    t1 = time.perf_counter()
    views = prepare_views(paths, 224, lm_files, args.auto_order, crop=crop == "detect")
    for w in views.warnings:
        print(f"warning: {w}")
    timing = {"load": t1 - t0, "landmarks+crop": time.perf_counter() - t1}
    if net is not None:
        from mvf.recon.pipeline import reconstruct

        t2 = time.perf_counter()
        crops = {v: (views.crops[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
                 for i, v in enumerate(views.names)}
        rec = reconstruct(net, crops)
        if tuple(rec.views) != tuple(views.names):
            raise MvfError(f"{args.checkpoint}: the network predicted views {rec.views}, expected {views.names}")
        init = {"id": rec.id, "exp": rec.exp, "pose": np.stack([rec.pose[v] for v in views.names])}
        timing["network"] = time.perf_counter() - t2
    summary = reconstruct_photos(face, views, Path(args.out), cfg, init=init, timing=timing)
    print(f"landmark reprojection error: {summary['landmark_error_px']:.2f} px (224 px crops)")
    print_timing(summary["timing"])
    print("wrote " + ", ".join(str(p) for p in summary["written"]))
    return 0
