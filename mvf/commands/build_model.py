"""`mvf build-model`: build assets/face_model.npz from ICT-FaceKit data, then the calibrated
mediapipe landmark set assets/mediapipe_landmarks.npz from renders of it."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mvf.face.model import DEFAULT_ASSET, FaceModel, build_ict_asset, find_ict_source
from mvf.face.landmark_asset import DEFAULT_SET, save_landmark_set
from mvf.recon.calibrate import build_mediapipe_set


def add_parser(sub) -> None:
    p = sub.add_parser(
        "build-model", help="build the face-model asset from ICT-FaceKit",
        description="Build the triangulated face-region 3DMM asset (mm) from the ICT Face Model "
                    "Light. Source: --ict DIR, else $MVF_ICT_DIR, else ../shared/ict-facekit.")
    p.add_argument("--ict", metavar="DIR", help="ICT data folder or ICT-FaceKit clone")
    p.add_argument("--region", choices=["face", "narrow"], default="face",
                   help="face region to keep (default: face)")
    p.add_argument("--out", metavar="NPZ", default=None,
                   help="output path (default: assets/face_model.npz)")
    p.add_argument("--no-landmarks", action="store_true",
                   help="skip the calibrated mediapipe landmark set (assets/mediapipe_landmarks.npz)")
    p.add_argument("--landmarks-only", action="store_true",
                   help="only (re)build the calibrated landmark set from the existing face model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else DEFAULT_ASSET
    if not args.landmarks_only:
        src = find_ict_source(args.ict)
        meta = build_ict_asset(src, out, region=args.region)
        print(f"wrote {out}: {meta['n_vertices']} vertices, {meta['n_faces']} triangles, "
              f"{meta['n_id']} identity modes, {meta['n_exp']} expressions, region {meta['region']}, "
              f"units mm (from {src})")
    if args.no_landmarks or out != DEFAULT_ASSET:
        return 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and as fast on a small CPU
    try:
        lset, info = build_mediapipe_set(FaceModel.load(out))
    finally:
        torch.set_num_threads(threads)
    save_landmark_set(lset, DEFAULT_SET)
    print(f"wrote {DEFAULT_SET}: {info['n_points']} calibrated mediapipe points ({info['n_contour']} contour) "
          f"from {info['n_views']} synthetic views, {info['seconds']:.0f} s")
    return 0
