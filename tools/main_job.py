"""`make run`: the main job on the embedded default (grows with each stage of the project)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out"


def mvf(*args: str) -> None:
    """Run one `mvf` subcommand, echoing it; stop the job if it fails."""
    cmd = [sys.executable, "-m", "mvf", *args]
    print("$ mvf " + " ".join(args), flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        sys.exit(f"make run: step failed: mvf {' '.join(args)}")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    mvf("build-model")
    mvf("export", "--random", "--seed", "3", "--out", str(OUT / "random_face.obj"), "--landmarks")
    mvf("export", "--random", "--seed", "3", "--out", str(OUT / "random_face.ply"))
    print(f"\nmake run: done. Outputs in {OUT}")


if __name__ == "__main__":
    main()
