"""Training speed per config and stage on this machine: seconds per step and images per second.

    .venv/bin/python tools/bench_train.py [--configs smoke cpu paper] [--steps 3] [--json]

Each stage of each config runs its real training step (data loading, forward, loss, backward,
Adam) on a small synthetic set (``data/bench/train-s777-n24``, made with `mvf synth` the first
time), at the config's batch size, image size and backbone. One warm-up step is not timed.
Images per second counts every view of every sample. A self_supervised stage (issue 6: network
+ render + cross-view warp + flow) is timed the same way on the same images (labels ignored);
``x sup`` is its step time over the config's supervised stage's at the same batch size.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

BENCH_SEED = 777


def bench_config(name: str, data: Path, steps: int, threads: int | None) -> list[dict]:
    import torch

    from mvf.train.config import load_train_config
    from mvf.train.loop import Trainer, lr_at

    overrides = [f"validation.root={data}", "validation.val_fraction=0.0", "tensorboard=false",
                 "progress=false", "device=cpu"]
    cfg = load_train_config(ROOT / "configs" / f"{name}.yaml", overrides)
    for st in cfg.stages:
        st.data.root = str(data)
        st.data.max_subjects = None
    if threads:
        cfg.threads = threads
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", quiet=True)
        for stage in trainer.plan:
            if stage.dataset is None:  # switched off (zero budget)
                continue
            trainer.optimizer = None
            trainer._enter_stage(stage)
            times = []
            loader = iter(trainer._loader(stage, 0, steps + 1))
            for i in range(steps + 1):
                t0 = time.perf_counter()
                batch = next(loader)
                trainer.train_step(stage, batch, lr_at(stage.cfg, i, stage.steps))
                if i > 0:
                    times.append(time.perf_counter() - t0)
            sec = sorted(times)[len(times) // 2]
            b, v = stage.cfg.batch_size, len(cfg.model.views)
            rows.append({"config": name, "stage": stage.cfg.name, "kind": stage.cfg.kind,
                         "backbone": cfg.model.backbone, "image_size": cfg.model.image_size,
                         "views": v, "batch_size": b, "sec_per_step": sec,
                         # a geometry stage reads no images (2D landmarks of sampled faces)
                         "images_per_sec": None if stage.cfg.kind == "geometry" else b * v / sec,
                         "threads": torch.get_num_threads(), "timed_steps": len(times)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["smoke", "cpu", "paper"], help="configs/<name>.yaml")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stage (median reported)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from bench_accuracy import ensure_heldout

    from mvf.errors import MvfError

    data = ROOT / "data" / "bench" / f"train-s{BENCH_SEED}-n24"
    ensure_heldout(data, 24, BENCH_SEED, 224)
    rows = []
    for name in args.configs:
        try:
            rows += bench_config(name, data, args.steps, args.threads)
        except MvfError as e:
            sys.exit(f"bench_train: error: {e}")
    for r in rows:
        sup = [q for q in rows if q["config"] == r["config"] and q["kind"] == "supervised"
               and q["batch_size"] == r["batch_size"]]
        r["vs_supervised"] = r["sec_per_step"] / sup[0]["sec_per_step"] if sup else None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| config | stage | kind | backbone | px | views x batch | s/step | images/s | x sup |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = "-" if r["vs_supervised"] is None else f"{r['vs_supervised']:.2f}"
        print(f"| {r['config']} | {r['stage']} | {r['kind']} | {r['backbone']} | {r['image_size']} | "
              f"{r['views']} x {r['batch_size']} | {r['sec_per_step']:.3f} | "
              f"{'-' if r['images_per_sec'] is None else format(r['images_per_sec'], '.1f')} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
