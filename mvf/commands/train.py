"""`mvf train`: train MVF-Net from a YAML config (stages of supervised / self-supervised steps)."""
from __future__ import annotations

import argparse
import os

from mvf.errors import MvfError
from mvf.train.config import load_train_config
from mvf.train.loop import train


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train the network from a config",
        description="Train MVF-Net. Configs: configs/paper.yaml (GPU, the paper's settings), "
                    "configs/cpu.yaml (this machine, <= 30 min), configs/smoke.yaml (< 2 min). "
                    "Multi-process: torchrun --nproc_per_node=2 -m mvf train ...")
    p.add_argument("--config", metavar="YAML", required=True, help="training config")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config key, e.g. stages.supervised.lr=1e-4 (repeatable)")
    p.add_argument("--out", metavar="DIR", required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--steps", type=int, metavar="N", default=None,
                   help="stop after N global steps in total (a cap; the schedule is unchanged)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (a status line every 15 s instead) and no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 0:
        raise MvfError(f"--steps {args.steps}: must be >= 0")
    cfg = load_train_config(args.config, args.overrides)
    summary = train(cfg, args.out, resume=args.resume, max_steps=args.steps, quiet=args.quiet)
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        val = summary["validation"] or {}
        line = (f"trained {summary['steps_run']} steps (now at {summary['step']}/{summary['total_steps']}) "
                f"in {summary['seconds']:.0f} s -> {summary['out']}/last.pt")
        if val:
            line += (f"; validation: vertex RMSE {val['rmse_mm']:.3f} mm (rigid), "
                     f"landmarks {val['landmark_px']:.2f} px, pose {val['pose_deg']:.2f} deg")
        print(line)
    return 0
