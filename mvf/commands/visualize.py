"""`mvf visualize`: per-view picture sheets (overlay, visibility, co-visibility, warps, error)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvf.errors import MvfError, file_error
from mvf.face.model import FaceModel
from mvf.face.params import load_params
from mvf.fileio import prepare_output_dir, write_image, write_json
from mvf.losses.flow import build_flow
from mvf.losses.selfsup import inner_face_region
from mvf.recon.fit import face_camera, valid_camera_distance
from mvf.recon.views import FRAMED_MAX_SIDE, gather_views, read_view_image, same_view_warnings
from mvf.train.selfsup_stage import cross_view_sheets
from renderer.camera import make_pose, view_meshes
from renderer.shading import render
from renderer.textures import smooth_random_colours
from renderer.views import VIEWS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "visualize", help="picture sheets of a mesh against a view triplet",
        description="Write one PNG sheet per view: input, mesh overlay, visibility mask, "
                    "co-visibility with each other view, each warped I_A->B and the photometric "
                    "error; then per view pair the eroded co-visible mask of the self-supervised "
                    "losses, the pair's photometric error map and the estimated flow field "
                    "F(I_B, I_A->B). Either --params P.json --images DIR, or --random.")
    p.add_argument("--params", metavar="JSON",
                   help='{"id": [...], "exp": [...], "pose": {"front": [f, pitch, yaw, roll, tx, ty], '
                        '"left": [...], "right": [...]}} (angles in radians, tx/ty in pixels of the images)')
    p.add_argument("--images", metavar="DIR", help="folder with front, left and right .png/.jpg")
    p.add_argument("--random", action="store_true",
                   help="render a random face with random colours and use its renders as the images")
    p.add_argument("--seed", type=int, default=0, help="random seed for --random (default 0)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument("--size", type=int, default=None,
                   help="image size in pixels (square; default: the images' size, longer side at most "
                        "1024; 224 for --random)")
    p.add_argument("--model", metavar="NPZ", default=None, help="face model asset (default assets/face_model.npz)")
    p.add_argument("--backend", choices=["auto", "fast", "pytorch3d"], default="auto", help="rasterizer")
    p.add_argument("--region", choices=["inner_face", "all"], default="inner_face",
                   help="triangles of the per-pair masks, errors and flow (default inner_face, as training)")
    p.add_argument("--no-flow", action="store_true", help="skip the flow-field panels")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- params
def read_params(path: str | Path, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Read a params JSON (`mvf.face.params`): ``(id (k_id,), exp (k_exp,), poses (3, 6),
    camera_distance_mm)``, the last the pinhole camera `mvf reconstruct` / `mvf fit` fitted through
    (0 when absent or null: weak perspective).

    Other extra keys are ignored; the three poses are required. `MvfError` naming the file on bad input.
    """
    params = load_params(path, model)
    missing = [v for v in VIEWS if v not in params.pose]
    if missing:
        raise file_error(path, f"'pose' lacks view '{missing[0]}' (need {', '.join(VIEWS)})")
    poses = params.poses(VIEWS)
    distance = params.extra.get("camera_distance_mm")
    if not valid_camera_distance(distance):
        raise file_error(path, f"'camera_distance_mm' must be null, 0 or a distance in [200, 100000] mm, "
                               f"got {distance!r}")
    return torch.from_numpy(params.id), torch.from_numpy(params.exp), poses, float(distance or 0.0)


def _load_images(folder: str | Path, size: int | None) -> tuple[torch.Tensor, float]:
    """``(V, 3, H', W')`` float images and the factor applied to pixel coordinates (``size``, else
    the images' size with the longer side at most `FRAMED_MAX_SIDE`)."""
    found = gather_views(images_dir=str(folder))
    missing = [v for v in VIEWS if v not in found]
    if missing:
        raise file_error(folder, f"no '{missing[0]}' image ({missing[0]}.png or .jpg)")
    paths = [found[v] for v in VIEWS]
    arrays = [read_view_image(p) for p in paths]
    for w in same_view_warnings(VIEWS, arrays, paths):
        print(f"warning: {w}", file=sys.stderr)
    h, w = arrays[0].shape[:2]
    for p, a in zip(paths, arrays):
        if a.shape[:2] != (h, w):
            raise file_error(p, f"size {a.shape[1]}x{a.shape[0]} differs from {paths[0].name} ({w}x{h})")
    if size is not None and h != w and (size, size) != (h, w):
        raise file_error(paths[0], f"--size needs square images, got {w}x{h}")
    scale = size / w if size is not None else min(1.0, FRAMED_MAX_SIDE / max(h, w))
    if scale != 1.0:
        new = (size, size) if size is not None else (round(w * scale), round(h * scale))
        arrays = [np.asarray(Image.fromarray(a).resize(new, Image.BILINEAR)) for a in arrays]
    stack = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return stack, scale


# ----------------------------------------------------------------------------- random scene
def random_scene(model, seed: int, size: int, backend: str = "auto"):
    """A random face (id ~ N(0, 1), 5 expressions ~ U(0, 1)), smooth random colours, hand-set
    poses for ``size`` px, and its renders over a grey background.

    Returns ``(verts (Nv, 3), poses (3, 6), images (3, 3, S, S), params dict)``.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randn(model.n_id, generator=g)
    exp = torch.zeros(model.n_exp)
    if model.n_exp:
        chosen = torch.randperm(model.n_exp, generator=g)[:5]
        exp[chosen] = torch.rand(chosen.numel(), generator=g)
    verts = model.decode(ids[None], exp[None])[0]
    colours = smooth_random_colours(verts, g)
    f = 0.62 * size / 224.0
    ty = size / 2 - 20.0 * f
    poses = torch.stack([make_pose(f, 0, 0, 0, size / 2, ty), make_pose(f, 8, -38, 3, size / 2, ty),
                         make_pose(f, 8, 38, -3, size / 2, ty)])
    rgba = render(verts[None].expand(3, -1, -1), model.faces, colours[None].expand(3, -1, -1), poses,
                  (size, size), backend=backend, background=(0.5, 0.5, 0.5))
    images = rgba[..., :3].permute(0, 3, 1, 2).contiguous()
    params = {"id": ids.tolist(), "exp": exp.tolist(),
              "pose": {v: poses[i].tolist() for i, v in enumerate(VIEWS)}}
    return verts, poses, images, params


# ----------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    if args.size is not None and not 8 <= args.size <= 4096:
        raise MvfError(f"--size {args.size}: must be between 8 and 4096")
    out = prepare_output_dir(args.out)
    model = FaceModel.load(args.model)
    if args.random:
        if args.params or args.images:
            raise MvfError("--random renders its own images: drop --params and --images")
        size = args.size or 224
        verts, poses, images, params = random_scene(model, args.seed, size, args.backend)
        for i, v in enumerate(VIEWS):
            write_image(out / "images" / f"{v}.png", images[i].permute(1, 2, 0).numpy())
        write_json(out / "params.json", params)
    else:
        if not args.params or not args.images:
            raise MvfError("give --params P.json and --images DIR (or --random)")
        ids, exp, poses, distance = read_params(args.params, model)
        images, scale = _load_images(args.images, args.size)
        poses[:, 0] *= scale
        poses[:, 4:] *= scale
        # pad to the model's sizes (shorter lists mean zeros for the remaining modes)
        ids = torch.cat([ids, torch.zeros(model.n_id - ids.numel())])
        exp = torch.cat([exp, torch.zeros(model.n_exp - exp.numel())])
        # drawn through the fit's camera: one pre-warped mesh per view for a pinhole fit
        verts = view_meshes(model.decode(ids[None], exp[None])[0], poses, face_camera(model, distance))
    region = inner_face_region(model) if args.region == "inner_face" else None
    flow_net = None if args.no_flow else build_flow()
    sheets = cross_view_sheets(images, verts, model.faces, poses, VIEWS, flow_net=flow_net, region=region,
                               backend=args.backend)
    for v, sheet in zip(VIEWS, sheets):
        path = out / f"sheet_{v}.png"
        write_image(path, sheet)
        print(f"wrote {path}")
    return 0
