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


def idle_cores(before: str, after: str) -> float:
    """How many CPUs were idle between two readings of ``/proc/stat`` (idle + iowait time over
    all time on its aggregate ``cpu`` line, times the number of ``cpuN`` lines)."""

    def read(text: str) -> tuple[int, int, int]:
        lines = text.splitlines()
        fields = [int(x) for x in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        return sum(fields), fields[3] + fields[4], cpus

    total0, idle0, cpus = read(before)
    total1, idle1, _ = read(after)
    return cpus * (idle1 - idle0) / max(total1 - total0, 1)


def default_threads(sample_s: float = 0.1) -> int:
    """torch CPU threads for a photo reconstruction: 2 when two cores are idle (sampled from
    ``/proc/stat`` over ``sample_s`` seconds; 2 where it cannot be read), else 1. Its small tensors
    gain from a second thread on an idle CPU (scan-lps on the 2-core reference CPU: 5.2 s wall
    against 6.2), but two threads sharing a core with another busy process wait on each other
    (33.6 s against 6.2 with one thread)."""
    if (os.cpu_count() or 1) < 2:
        return 1
    try:
        with open("/proc/stat") as f:
            before = f.read()
        time.sleep(sample_s)
        with open("/proc/stat") as f:
            after = f.read()
        return 2 if idle_cores(before, after) >= 1.5 else 1
    except (OSError, ValueError, IndexError):
        return 2


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
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2 when two CPU cores are idle, else 1; on the 2-core "
                        "reference CPU 2 threads take 5.2 s for scan-lps against 6.2, the same result, "
                        "but 34 s when another process keeps a core busy)")
    add_view_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise MvfError(f"--threads {args.threads}: must be >= 1")
    if args.refine_steps is not None and args.refine_steps < 0:
        raise MvfError(f"--refine-steps {args.refine_steps}: must be >= 0")
    check_device(args.device)
    paths, lm_files = views_from_args(args)
    prepare_output_dir(args.out)
    torch.set_num_threads(args.threads or default_threads())
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
    for w in rec.wide_view_warnings():
        print(f"warning: {w}", file=sys.stderr)
    written = write_outputs(rec, args.out, timing=timing)
    print_summary(rec, written)
    return 0
