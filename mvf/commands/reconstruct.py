"""`mvf reconstruct`: front/left/right images -> a textured face mesh (network and/or fitting)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

from mvf.config import load_config
from mvf.commands.device import check_device
from mvf.errors import MvfError
from mvf.fileio import prepare_output_dir
from mvf.net.checkpoint import load_model
from mvf.recon.fit import FitConfig
from mvf.recon.pipeline import network_fit_config
from mvf.recon.outputs import print_summary, write_outputs
from mvf.recon.pipeline import reconstruct
from mvf.recon.views import add_view_arguments, detect_views, framed_views, views_from_args


def default_threads() -> int:
    """torch CPU threads for a photo reconstruction: 2, or 1 on a one-core CPU. Its small tensors
    gain from a second thread (scan-lps on the 2-core reference CPU: cross-view phase 3.2 -> 2.4 s,
    the same coefficients) but were not measured on more."""
    return min(2, os.cpu_count() or 1)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reconstruct", help="3D face from front/left/right images: a trained network and/or test-time fitting",
        description="With --checkpoint, images are square crops in the training framing (like `mvf synth` "
                    "output; --crop none) or photos (--crop detect), and the network predicts the face "
                    "(--refine-steps N fits it further). Without a checkpoint, photos are reconstructed "
                    "by test-time fitting (see `mvf fit`). Writes mesh.obj/.mtl/.png, mesh.ply, "
                    "params.json, overlay_<view>.png and timing.json. A concat-fusion model needs all "
                    "three views; mean/attention models take any of them (e.g. --front alone).")
    p.add_argument("--checkpoint", metavar="PT",
                   help="checkpoint from `mvf train`; without one, photos are reconstructed by test-time "
                        "fitting (landmarks, crop, fit, texture)")
    p.add_argument("--crop", choices=["auto", "detect", "none"], default="auto",
                   help="detect landmarks and crop MVF-Net style (detect), or take inputs already in the "
                        "training framing (none); auto = none with --checkpoint, detect without and with a "
                        "detector-input checkpoint (model.geometry_input: detector)")
    p.add_argument("--refine-steps", type=int, default=None, metavar="N",
                   help="test-time fitting steps after the network's prediction (implies landmarks); "
                        "0 = the regression alone; default: 0, or for a detector-input checkpoint the fit "
                        "chosen on the tuning set of tools/bench_real.py")
    p.add_argument("--fit-config", metavar="YAML", help="fitting settings (mvf.recon.fit.FitConfig keys)")
    p.add_argument("--camera-distance", type=float, default=None, metavar="MM",
                   help="the photos' camera distance (mm, 200-100000; 0: weak perspective), when known: "
                        "the fit looks through a pinhole camera there (FitConfig.camera_distance_mm) and "
                        "keeps it (fit_distance false unless the --fit-config sets it); default: 1000 for "
                        "detected photos, refined by the cross-view phase (fit_distance), weak perspective "
                        "for landmark files. Needs a fit (no --checkpoint, or --refine-steps > 0)")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch CPU threads (default: 2, or 1 on a one-core CPU; on the 2-core "
                        "reference CPU 2 threads cut the cross-view phase by ~25%% with the same result)")
    add_view_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise MvfError(f"--threads {args.threads}: must be >= 1")
    if args.refine_steps is not None and args.refine_steps < 0:
        raise MvfError(f"--refine-steps {args.refine_steps}: must be >= 0")
    check_device(args.device)
    paths, lm_files = views_from_args(args)
    prepare_output_dir(args.out)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    network = load_model(args.checkpoint, args.device) if args.checkpoint else None
    detector_net = network is not None and network.net.detector_input
    crop = args.crop if args.crop != "auto" else ("none" if network is not None and not detector_net else "detect")
    fit_cfg = None
    if network is None:
        fit_cfg = load_config(args.fit_config, FitConfig)
    else:
        fit_cfg = network_fit_config(network, load_config(args.fit_config, FitConfig), args.refine_steps)
    if args.camera_distance is not None:
        if fit_cfg is None:
            raise MvfError(f"--camera-distance {args.camera_distance:g}: only the fit uses a camera "
                           "distance (the network's camera is weak perspective); add --refine-steps N")
        try:
            known = {} if fit_cfg.fit_distance is not None else {"fit_distance": False}
            fit_cfg = dataclasses.replace(fit_cfg, camera_distance_mm=args.camera_distance, **known)
        except MvfError as e:
            raise MvfError(f"--camera-distance {args.camera_distance:g}: {e}") from None
    t1 = time.perf_counter()
    if crop == "detect" or fit_cfg is not None:
        views = detect_views(paths, 224, lm_files, args.auto_order, crop=crop == "detect")
    else:
        views = framed_views(paths)
    timing = {"load": t1 - t0, "detect_crop": time.perf_counter() - t1}
    for w in views.warnings:
        print(f"warning: {w}", file=sys.stderr)
    rec = reconstruct(views, network, fit_cfg)
    written = write_outputs(rec, args.out, timing=timing)
    print_summary(rec, written)
    return 0
