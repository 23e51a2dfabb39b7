"""`mvf fit`: test-time fitting on photos, no trained model needed."""
from __future__ import annotations

import argparse
from pathlib import Path

from renderer.views import VIEWS


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    """--front/--left/--right (or --images DIR) and per-view landmark files."""
    for v in VIEWS:
        p.add_argument(f"--{v}", metavar="IMG", help=f"{v} photo")
    p.add_argument("--images", metavar="DIR", help="folder with front/left/right.<jpg|png>")
    for v in VIEWS:
        p.add_argument(f"--{v}-landmarks", metavar="FILE",
                       help=f"68-point landmarks for the {v} photo (.pts or .npy); overrides detection")
    p.add_argument("--auto-order", action="store_true",
                   help="reassign photos whose detected yaw contradicts their slot")
    p.add_argument("--no-crop", action="store_true",
                   help="inputs are already square crops in the model's framing")


def view_paths(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Path]]:
    """Image and landmark-file paths per view from the parsed arguments."""
    from mvf.errors import MvfError
    from mvf.fileio import find_view_image

    paths: dict[str, Path] = {}
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise MvfError(f"{folder}: images folder not found")
        paths = {v: find_view_image(folder, v) for v in VIEWS}
    for v in VIEWS:
        if getattr(args, v):
            paths[v] = Path(getattr(args, v))
    if not paths:
        raise MvfError("no images: give --front/--left/--right or --images DIR")
    lms = {v: Path(getattr(args, f"{v}_landmarks")) for v in VIEWS if getattr(args, f"{v}_landmarks")}
    return paths, lms


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fit", help="fit the face model to photos (no trained model needed)",
        description="Detect landmarks (mediapipe) or read landmark files, crop, fit id/exp/poses "
                    "to the landmarks (optionally also to the views' photometric agreement), texture "
                    "from the views and write mesh.obj/.mtl/.png, mesh.ply, params.json, "
                    "overlay_<view>.png on the full photos and timing.json.")
    add_view_arguments(p)
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
    import time

    import torch

    from mvf.config import load_config
    from mvf.errors import MvfError
    from mvf.face.model import FaceModel
    from mvf.recon.fit import FitConfig
    from mvf.recon.photos import prepare_views, print_timing, reconstruct_photos
    from mvf.recon.texture import TextureConfig

    if args.threads < 1:
        raise MvfError(f"--threads {args.threads}: must be >= 1")
    if args.size < 64:
        raise MvfError(f"--size {args.size}: crops must be at least 64 px")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = load_config(args.config, FitConfig, args.set)
    tex_cfg = TextureConfig(size=args.texture_size)
    paths, lm_files = view_paths(args)
    model = FaceModel.load()
    t1 = time.perf_counter()
    views = prepare_views(paths, args.size, lm_files, args.auto_order, crop=not args.no_crop)
    for w in views.warnings:
        print(f"warning: {w}")
    timing = {"load": t1 - t0, "detect_crop": time.perf_counter() - t1}
    summary = reconstruct_photos(model, views, Path(args.out), cfg, texture_cfg=tex_cfg, timing=timing)
    per_view = ", ".join(f"{v} {e:.2f}" for v, e in summary["landmark_error_per_view"].items())
    print(f"landmark reprojection error: {summary['landmark_error_px']:.2f} px mean ({per_view}; "
          f"crop frame, {args.size} px)")
    print_timing(summary["timing"])
    print("wrote " + ", ".join(str(p) for p in summary["written"]))
    return 0
