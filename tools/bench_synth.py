"""Benchmark `mvf synth`: subjects per second at 224 px with 3 views on this machine.

    .venv/bin/python tools/bench_synth.py [--subjects 48] [--size 224] [--batch 8] [--workers 2]
                                          [--backend auto] [--json]

Generates a fresh dataset in a temporary folder with `mvf.data.synth.generate` (the code behind
``mvf synth``, files written and all) after one warm-up batch, and prints a table (or JSON) with
the end-to-end rate, the process CPU seconds per subject (all threads; less sensitive to other
jobs on a shared machine than the wall-clock rate), the 1-minute load average, and a breakdown of
one batch: sampling, rendering, encoding/writing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=48)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    import torch

    from mvf.data.config import SynthConfig
    from mvf.data.format import subject_name, write_subject
    from mvf.data.synth import SynthGenerator, generate
    from mvf.face.model import FaceModel

    model = FaceModel.load()
    cfg = SynthConfig()
    gen = SynthGenerator(cfg, model, size=args.size, backend=args.backend)
    faces = model.faces.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up and breakdown on one batch (indices past the timed run)
        first = 10**6
        gen.render([gen.draw(args.seed, first + i) for i in range(2)])
        t0 = time.perf_counter()
        draws = [gen.draw(args.seed, first + i) for i in range(args.batch)]
        t1 = time.perf_counter()
        results = gen.render(draws)
        t2 = time.perf_counter()
        for r in results:
            write_subject(Path(tmp) / "breakdown" / subject_name(r.index), r.images, r.verts, faces, r.labels)
        t3 = time.perf_counter()
        cpu0 = time.process_time()
        stats = generate(Path(tmp) / "run", args.subjects, args.seed, cfg, model, size=args.size,
                         batch=args.batch, workers=args.workers, backend=args.backend, progress=False)
        cpu = time.process_time() - cpu0
    n = args.batch
    row = {
        "subjects": args.subjects, "size": args.size, "views": 3, "batch": args.batch,
        "workers": args.workers, "threads": torch.get_num_threads(), "seconds": round(stats.seconds, 2),
        "subjects_per_s": round(stats.per_second, 3),
        "ms_per_image": round(1000 * stats.seconds / max(stats.made * 3, 1), 1),
        "cpu_s_per_subject": round(cpu / max(stats.made, 1), 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "breakdown_ms_per_subject": {"sample": round(1000 * (t1 - t0) / n, 1),
                                     "render": round(1000 * (t2 - t1) / n, 1),
                                     "write_inline": round(1000 * (t3 - t2) / n, 1)},
    }
    if args.json:
        print(json.dumps(row))
    else:
        b = row.pop("breakdown_ms_per_subject")
        keys = list(row)
        print(" | ".join(f"{k:>{max(len(k), 8)}}" for k in keys))
        print(" | ".join(f"{row[k]!s:>{max(len(k), 8)}}" for k in keys))
        print("one batch, ms per subject: " + ", ".join(f"{k} {v}" for k, v in b.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
