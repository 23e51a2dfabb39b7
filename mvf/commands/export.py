"""`mvf export`: decode face parameters (or a random face) and write .obj/.ply."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mvf.face.model import FaceModel
from mvf.face.params import load_params, random_params
from mvf.fileio import atomic_path, prepare_output_file, read_image
from mvf.io import check_mesh_suffix, save_mesh


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a face mesh (.obj/.ply) from a params file or a random sample",
        description="Decode 3DMM coefficients into a mesh in mm. The format follows --out's suffix: "
                    ".obj (with UVs; MTL + PNG with --texture) or .ply (with per-vertex colours when "
                    "the params carry them).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--params", metavar="JSON", help="params file: {id, exp, [pose], [colours]}")
    src.add_argument("--random", action="store_true", help="sample a random face")
    p.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    p.add_argument("--out", required=True, metavar="MESH", help="output .obj or .ply")
    p.add_argument("--texture", metavar="PNG", help="UV texture image for .obj output")
    p.add_argument("--landmarks", action="store_true",
                   help="also write the 68 3D landmarks (mm) to <out stem>_landmarks.txt")
    p.add_argument("--model", metavar="NPZ", help="face model asset (default assets/face_model.npz)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    suffix = check_mesh_suffix(out, write=True)
    prepare_output_file(out)
    model = FaceModel.load(args.model)
    params = load_params(args.params, model) if args.params else random_params(model, args.seed)
    verts = params.decode(model)
    texture = read_image(args.texture) if args.texture else None
    if texture is not None and suffix != ".obj":
        print(f"note: {out}: a texture is only written with .obj; ignoring --texture")
    kwargs = {}
    if suffix == ".obj":
        kwargs = dict(verts_uvs=model.verts_uvs, faces_uvs=model.faces_uvs, texture=texture)
    else:
        kwargs = dict(colours=params.colours)
    written = save_mesh(out, verts, model.faces, **kwargs)
    if args.landmarks:
        lm_path = out.with_name(out.stem + "_landmarks.txt")
        with atomic_path(lm_path) as tmp:
            np.savetxt(tmp, model.landmarks_3d(verts).cpu().numpy(), fmt="%.4f",
                       header="68 iBUG landmarks, x y z in mm (model space)")
        written.append(lm_path)
    width = (verts[:, 0].max() - verts[:, 0].min()).item()
    print(f"wrote {', '.join(map(str, written))}: {model.n_verts} vertices, "
          f"{model.faces.shape[0]} triangles, {width:.1f} mm wide")
    return 0
