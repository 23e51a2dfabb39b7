"""`mvf build-model`: build assets/face_model.npz from ICT-FaceKit data."""
from __future__ import annotations

import argparse
from pathlib import Path

from mvf.face.model import DEFAULT_ASSET, build_ict_asset, find_ict_source


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    src = find_ict_source(args.ict)
    out = Path(args.out) if args.out else DEFAULT_ASSET
    meta = build_ict_asset(src, out, region=args.region)
    print(f"wrote {out}: {meta['n_vertices']} vertices, {meta['n_faces']} triangles, "
          f"{meta['n_id']} identity modes, {meta['n_exp']} expressions, region {meta['region']}, "
          f"units mm (from {src})")
    return 0
