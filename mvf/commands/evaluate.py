"""`mvf evaluate`: MICC Florence protocol, predicted mesh vs ground-truth scan (RMSE in mm)."""
from __future__ import annotations

import argparse

from mvf.errors import MvfError
from mvf.evaluation.micc import evaluate_meshes, format_table, read_landmarks_3d
from mvf.face.model import FaceModel
from mvf.fileio import prepare_output_file, write_json
from mvf.io import check_mesh_suffix, load_mesh, save_mesh


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
    p.add_argument("--pred-landmarks", metavar="FILE",
                   help="3D landmarks of --pred (default with --gt-landmarks: the face model's 68 "
                        "landmark vertices, when --pred has the model's vertex count)")
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
    p.add_argument("--model", metavar="NPZ", help="face model asset for the default --pred-landmarks "
                                                  "(default assets/face_model.npz)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.crop_radius <= 0:
        raise MvfError(f"--crop-radius {args.crop_radius:g}: must be positive")
    if args.icp_iters < 1:
        raise MvfError(f"--icp-iters {args.icp_iters}: must be at least 1")
    if args.aligned_out:
        check_mesh_suffix(args.aligned_out, write=True)
    for out in (args.json, args.aligned_out):
        if out:
            prepare_output_file(out)
    pred = load_mesh(args.pred)
    gt = load_mesh(args.gt)
    pred_lm = read_landmarks_3d(args.pred_landmarks, pred.vertices) if args.pred_landmarks else None
    gt_lm = read_landmarks_3d(args.gt_landmarks, gt.vertices) if args.gt_landmarks else None
    if gt_lm is not None and pred_lm is None:
        pred_lm = model_landmarks(args.pred, pred.vertices, args.model)
    res = evaluate_meshes(pred, gt, pred_lm, gt_lm, crop_radius=args.crop_radius,
                          pred_nose_index=args.pred_nose_index, gt_nose_index=args.gt_nose_index,
                          scale=not args.rigid, icp_iters=args.icp_iters, icp_method=args.icp_method)
    print(f"pred: {args.pred}\ngt:   {args.gt}")
    print(format_table(res))
    if args.json:
        write_json(args.json, {"pred": str(args.pred), "gt": str(args.gt), **res.to_dict()})
        print(f"wrote {args.json}")
    if args.aligned_out:
        save_mesh(args.aligned_out, res.transform.apply(pred.vertices), pred.faces, colours=pred.colours,
                  verts_uvs=pred.verts_uvs, faces_uvs=pred.faces_uvs)
        print(f"wrote {args.aligned_out}")
    return 0


def model_landmarks(pred_path, vertices, model_path=None):
    """The 68 landmarks ``(68, 3)`` of a prediction decoded from the face model (same vertex order).

    `MvfError` when the prediction's vertex count is not the model's.
    """
    model = FaceModel.load(model_path)
    if len(vertices) != model.n_verts:
        raise MvfError(f"{pred_path}: {len(vertices)} vertices, not the face model's {model.n_verts}; "
                       "give --pred-landmarks")
    return vertices[model.landmarks.numpy()]
