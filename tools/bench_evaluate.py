"""Benchmark `mvf evaluate`'s pieces on synthetic pairs built from the face model.

Cases (the scan is the face model's mean, mm; the prediction is derived from it):
  identical     pred == scan (nose-tip init + coarse search + ICP)
  similarity    pred = scan moved by a known similarity (nose-tip init)
  landmarks     same, initialised from the 68 model landmarks
  noise-0.5mm   scan = mean + N(0, 0.5 mm) along the normals
  dense-scan    scan = mean subdivided once (~4x points), pred = mean
and the exact closest-point query alone (points/second).

    .venv/bin/python tools/bench_evaluate.py [--repeat N] [--json OUT]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvf.align import Similarity  # noqa: E402
from mvf.evaluation.micc import SurfaceQuery, evaluate_meshes  # noqa: E402
from mvf.face.model import FaceModel  # noqa: E402
from mvf.fileio import write_json  # noqa: E402
from mvf.io import Mesh  # noqa: E402
from renderer.rotations import euler_deg_to_matrix_np  # noqa: E402


def cases():
    import trimesh

    m = FaceModel.load()
    v, f, lmk = m.mean.double().numpy(), m.faces.numpy(), m.landmarks.numpy()
    mesh = Mesh(v, f)
    true = Similarity(1.08, euler_deg_to_matrix_np([-12, 23, 6]), np.array([30.0, -20.0, 100.0]))
    moved = Mesh(true.inverse().apply(v), f)
    normals = np.asarray(trimesh.Trimesh(v, f, process=False).vertex_normals)
    noise = np.random.default_rng(1).normal(0, 0.5, len(v))
    noisy = Mesh(v + noise[:, None] * normals, f)
    sv, sf = trimesh.remesh.subdivide(v, f)
    dense = Mesh(np.asarray(sv), np.asarray(sf))
    return [
        ("identical", lambda: evaluate_meshes(mesh, mesh)),
        ("similarity", lambda: evaluate_meshes(moved, mesh)),
        ("landmarks", lambda: evaluate_meshes(moved, mesh, moved.vertices[lmk], v[lmk])),
        ("noise-0.5mm", lambda: evaluate_meshes(mesh, noisy)),
        ("dense-scan", lambda: evaluate_meshes(mesh, dense)),
    ], mesh


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (the fastest is kept)")
    ap.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    args = ap.parse_args(argv)

    rows = []
    runs, mesh = cases()
    for name, fn in runs:
        best = None
        for _ in range(args.repeat):
            res = fn()
            if best is None or res.seconds < best.seconds:
                best = res
        rows.append({"case": name, "scan_points": best.n_gt_points, "rmse_mm": best.rmse,
                     "icp_iterations": best.icp_iterations, "total_s": best.seconds, **best.timings})
    rng = np.random.default_rng(0)
    q = mesh.vertices[rng.integers(0, len(mesh.vertices), 20000)] + rng.normal(0, 1.0, (20000, 3))
    sq = SurfaceQuery(mesh.vertices, mesh.faces)
    t = min(_timed(lambda: sq.query(q)) for _ in range(args.repeat))
    rows.append({"case": "closest-point query", "scan_points": len(q), "rmse_mm": float("nan"),
                 "icp_iterations": 0, "total_s": t, "points_per_s": len(q) / t})

    cols = ["case", "scan_points", "rmse_mm", "icp_iterations", "crop_and_init", "icp", "distances", "total_s"]
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" | ".join(f"{_fmt(r.get(c, '')):>14}" for c in cols))
    print(f"closest-point query: {rows[-1]['points_per_s']:.0f} points/s on a "
          f"{len(mesh.faces)}-triangle mesh")
    if args.json:
        write_json(args.json, {"rows": rows})
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _fmt(x) -> str:
    if isinstance(x, float):
        return "nan" if x != x else (f"{x:.2e}" if 0 < abs(x) < 1e-2 else f"{x:.3f}")
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
