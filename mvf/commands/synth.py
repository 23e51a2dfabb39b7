"""`mvf synth`: render a synthetic multi-view face dataset with exact ground truth."""
from __future__ import annotations

import argparse
from pathlib import Path

from mvf.config import load_config
from mvf.data.config import SynthConfig
from mvf.data.synth import generate
from mvf.commands.device import check_device
from mvf.errors import MvfError
from mvf.face.model import FaceModel
from mvf.fileio import prepare_output_dir


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth", help="render synthetic front/left/right faces with ground truth",
        description="Sample faces from the 3DMM (identity, expression, albedo, lights, views, "
                    "background), render three views each and write DIR/index.json plus "
                    "DIR/<subject>/{front,left,right}.png, labels.npz, mesh.ply and done.json (their "
                    "checksums). Deterministic for a seed; re-running skips subjects whose files "
                    "match their checksums and makes the others again.")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created or resumed)")
    p.add_argument("--subjects", type=int, required=True, metavar="N", help="number of subjects")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--size", type=int, default=224, help="image size in pixels (default 224)")
    p.add_argument("--config", metavar="YAML", help="generator settings (default: built-in, as configs/synth.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set views.side_yaw=[30,70] (repeatable)")
    p.add_argument("--batch", type=int, default=8, help="subjects rendered per batch (default 8)")
    p.add_argument("--workers", type=int, default=2, help="threads writing files (default 2; 0 = inline)")
    p.add_argument("--backend", default="auto", help="renderer backend: auto, fast or pytorch3d")
    p.add_argument("--model", metavar="NPZ", help="face model asset (default assets/face_model.npz)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.subjects < 1:
        raise MvfError(f"--subjects {args.subjects}: must be at least 1")
    check_device(args.device)
    cfg = load_config(args.config, SynthConfig, args.set)
    model = FaceModel.load(args.model, device=args.device)
    prepare_output_dir(args.out)  # before any rendering: a file in the way is one line
    stats = generate(Path(args.out), args.subjects, args.seed, cfg, model, size=args.size,
                     batch=args.batch, workers=args.workers, backend=args.backend,
                     progress=not args.quiet)
    rate = f", {stats.per_second:.2f} subjects/s" if stats.made else ""
    print(f"wrote {stats.made} subjects to {args.out} ({stats.skipped} already complete) "
          f"in {stats.seconds:.1f} s{rate}")
    return 0
