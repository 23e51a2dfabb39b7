"""Large photos (issue 15, item 2): wall time and peak memory of `mvf reconstruct` on a
10000x10000 photo made by upscaling ../shared/samples/triplet-1, on both paths.

Cases (each a fresh ``python -m mvf`` process under ``/usr/bin/time -v``, one thread):
  checkpoint  ``mvf reconstruct --checkpoint C --images DIR`` with all three views upscaled to
              N x N (framed inputs: one size); C is ``--checkpoint`` or a smoke checkpoint
              trained here for 2 steps on 8 synthetic subjects (speed and memory only)
  fit         ``mvf reconstruct --front BIG --left L --right R`` (detection, crop, fit, texture)
              with the front view upscaled to N x N and the side views as they are

    .venv/bin/python tools/bench_bad_input.py [--size 10000] [--checkpoint C] [--json OUT]

Target: each under 30 s and 3 GB peak RSS. Prints the table (and each run's seconds per stage
from its timing.json); ``--json`` writes them. Wall times include ~5 s of imports.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRIPLET = ROOT.parent / "shared" / "samples" / "triplet-1"
VIEWS = ("front", "left", "right")


def upscale(src: Path, dst: Path, size: int) -> Path:
    Image.open(src).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(dst, quality=92)
    return dst


def smoke_checkpoint(work: Path) -> Path:
    data, run = work / "synth", work / "run"
    mvf = [sys.executable, "-m", "mvf"]
    subprocess.run([*mvf, "synth", "--out", str(data), "--subjects", "8", "--seed", "123", "--size", "64",
                    "--quiet"], check=True, cwd=ROOT)
    subprocess.run([*mvf, "train", "--config", str(ROOT / "configs" / "smoke.yaml"), "--out", str(run),
                    "--quiet", "--steps", "2", "--set", f"validation.root={data}",
                    "--set", f"stages.0.data.root={data}", "--set", "tensorboard=false"], check=True, cwd=ROOT)
    return run / "last.pt"


def measure(argv: list[str]) -> dict:
    """Run ``python -m mvf argv`` under /usr/bin/time -v: exit code, wall s, peak RSS GB."""
    res = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "mvf", *argv], capture_output=True,
                         text=True, cwd=ROOT)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", res.stderr).group(1)
    seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    mvf_err = [ln for ln in res.stderr.splitlines() if ln.startswith("mvf ") or ln.startswith("warning")]
    return {"exit": res.returncode, "wall_s": round(seconds, 2), "peak_rss_gb": round(rss_kb / 1024 ** 2, 3),
            "mvf_stderr": mvf_err}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000, help="side of the upscaled photo (default 10000)")
    ap.add_argument("--checkpoint", help="checkpoint for the checkpoint path (default: a 2-step smoke one)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_bad_input.") as tmp:
        work = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else smoke_checkpoint(work)
        big = work / "big"
        big.mkdir()
        for v in VIEWS:
            upscale(TRIPLET / f"{v}.jpg", big / f"{v}.jpg", args.size)
        results = {
            "checkpoint": measure(["reconstruct", "--checkpoint", str(ckpt), "--images", str(big),
                                   "--out", str(work / "rec_ckpt")]),
            "fit": measure(["reconstruct", "--front", str(big / "front.jpg"), "--left", str(TRIPLET / "left.jpg"),
                            "--right", str(TRIPLET / "right.jpg"), "--out", str(work / "rec_fit")]),
        }
        for name, r in results.items():
            out = work / f"rec_{'ckpt' if name == 'checkpoint' else 'fit'}"
            r["overlay_front_px"] = list(Image.open(out / "overlay_front.png").size) if r["exit"] == 0 else None
            r["stages_s"] = json.loads((out / "timing.json").read_text()) if r["exit"] == 0 else None
    print(f"{args.size}x{args.size} photo; target < 30 s and < 3 GB")
    print(f"{'path':<12}{'exit':>5}{'wall s':>9}{'peak GB':>9}  overlay_front (w, h)")
    for name, r in results.items():
        print(f"{name:<12}{r['exit']:>5}{r['wall_s']:>9.1f}{r['peak_rss_gb']:>9.2f}  {r['overlay_front_px']}")
        print("            " + ", ".join(f"{k} {v:.1f}" for k, v in (r["stages_s"] or {}).items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, **results}, indent=2) + "\n")
    return 0 if all(r["exit"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
