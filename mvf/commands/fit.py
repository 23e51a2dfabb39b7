"""`mvf fit`: test-time fitting on photos, no trained model needed."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from mvf.config import load_config
from mvf.errors import MvfError
from mvf.face.model import FaceModel
from mvf.fileio import prepare_output_dir
from mvf.recon.fit import FitConfig
from mvf.recon.outputs import print_summary, write_outputs
from mvf.recon.pipeline import reconstruct
from mvf.recon.texture import TextureConfig
from mvf.recon.views import add_view_arguments, detect_views, views_from_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fit", help="fit the face model to photos (no trained model needed)",
        description="Detect landmarks (mediapipe) or read landmark files, crop, fit id/exp/poses "
                    "to the landmarks (optionally also to the views' photometric agreement), texture "
                    "from the views and write mesh.obj/.mtl/.png, mesh.ply, params.json, "
                    "overlay_<view>.png on the full photos and timing.json.")
    add_view_arguments(p)
    p.add_argument("--no-crop", action="store_true",
                   help="inputs are already square crops in the model's framing")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", metavar="YAML", help="fit settings (mvf.recon.fit.FitConfig keys, e.g. configs/fit.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fit setting, e.g. --set photo_steps=20")
    p.add_argument("--size", type=int, default=224, help="crop size in pixels (default 224)")
    p.add_argument("--texture-size", type=int, default=512, help="UV texture map side in pixels (default 512)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: this workload is many small operations, "
                        "which extra threads slow down, badly so on a busy machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise MvfError(f"--threads {args.threads}: must be >= 1")
    if args.size < 64:
        raise MvfError(f"--size {args.size}: crops must be at least 64 px")
    t0 = time.perf_counter()
    cfg = load_config(args.config, FitConfig, args.set)
    tex_cfg = TextureConfig(size=args.texture_size)
    paths, lm_files = views_from_args(args)
    prepare_output_dir(args.out)
    torch.set_num_threads(args.threads)
    face = FaceModel.load()
    t1 = time.perf_counter()
    views = detect_views(paths, args.size, lm_files, args.auto_order, crop=not args.no_crop)
    timing = {"load": t1 - t0, "detect_crop": time.perf_counter() - t1}
    for w in views.warnings:
        print(f"warning: {w}", file=sys.stderr)
    rec = reconstruct(views, None, cfg, face=face, texture_config=tex_cfg, progress=True)
    print_summary(rec, write_outputs(rec, args.out, timing=timing))
    return 0
