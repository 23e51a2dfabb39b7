"""`mvf evaluate`: MICC Florence protocol, predicted mesh vs ground-truth scan (RMSE in mm)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="compare a predicted mesh with a ground-truth scan (MICC protocol)",
        description="Align --pred to --gt (landmarks, or nose tip + coarse rotation search), crop "
                    "the scan to a sphere around its nose tip, refine with scaled ICP and report "
                    "the point-to-surface RMSE from the scan points to the predicted surface, in "
                    "the scan's units (mm). Meshes: .obj .ply .off .stl .wrl. Landmarks: .npy/.txt/"
                    ".csv/.xyz with (K, 3) coordinates or K vertex indices, or MeshLab .pp.")
    p.add_argument("--pred", required=True, metavar="MESH", help="predicted mesh (needs triangles)")
    p.add_argument("--gt", required=True, metavar="SCAN", help="ground-truth scan (e.g. MICC .wrl)")
    p.add_argument("--pred-landmarks", metavar="FILE", help="3D landmarks of --pred")
    p.add_argument("--gt-landmarks", metavar="FILE",
                   help="corresponding 3D landmarks of --gt (68 iBUG points: #30 is the nose tip)")
    p.add_argument("--pred-nose-index", type=int, metavar="I", help="nose-tip vertex of --pred")
    p.add_argument("--gt-nose-index", type=int, metavar="I", help="nose-tip vertex of --gt")
    p.add_argument("--crop-radius", type=float, default=95.0, metavar="MM",
                   help="scan crop radius around the nose tip (default: 95)")
    p.add_argument("--icp-iters", type=int, default=50, metavar="N", help="ICP iterations (default: 50)")
    p.add_argument("--icp-method", choices=["plane", "point"], default="plane",
                   help="ICP step: point-to-plane (default) or point-to-point")
    p.add_argument("--rigid", action="store_true", help="rigid ICP (no scale)")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.add_argument("--aligned-out", metavar="MESH", help="write the aligned prediction (.ply/.obj)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvf.errors import MvfError
    from mvf.evaluation.micc import evaluate_meshes, format_table, read_landmarks_3d
    from mvf.fileio import atomic_path, write_json
    from mvf.io import load_mesh

    if args.crop_radius <= 0:
        raise MvfError(f"--crop-radius {args.crop_radius:g}: must be positive")
    if args.icp_iters < 1:
        raise MvfError(f"--icp-iters {args.icp_iters}: must be at least 1")
    if args.aligned_out and not args.aligned_out.lower().endswith((".ply", ".obj")):
        raise MvfError(f"{args.aligned_out}: --aligned-out must end in .ply or .obj")
    pred = load_mesh(args.pred)
    gt = load_mesh(args.gt)
    pred_lm = read_landmarks_3d(args.pred_landmarks, pred.vertices) if args.pred_landmarks else None
    gt_lm = read_landmarks_3d(args.gt_landmarks, gt.vertices) if args.gt_landmarks else None
    res = evaluate_meshes(pred, gt, pred_lm, gt_lm, crop_radius=args.crop_radius,
                          pred_nose_index=args.pred_nose_index, gt_nose_index=args.gt_nose_index,
                          scale=not args.rigid, icp_iters=args.icp_iters, icp_method=args.icp_method)
    print(f"pred: {args.pred}\ngt:   {args.gt}")
    print(format_table(res))
    if args.json:
        write_json(args.json, {"pred": str(args.pred), "gt": str(args.gt), **res.to_dict()})
        print(f"wrote {args.json}")
    if args.aligned_out:
        import trimesh

        mesh = trimesh.Trimesh(res.transform.apply(pred.vertices), pred.faces, process=False)
        with atomic_path(args.aligned_out) as tmp:
            mesh.export(tmp)
        print(f"wrote {args.aligned_out}")
    return 0
