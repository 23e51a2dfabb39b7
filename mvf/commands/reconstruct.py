"""`mvf reconstruct`: a trained network turns front/left/right images into a face mesh."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reconstruct", help="predict a 3D face from front/left/right images with a trained checkpoint",
        description="Images must be square crops in the training framing (like `mvf synth` output). "
                    "Writes mesh.obj (with UVs), mesh.ply, params.json (id, exp, per-view pose in the "
                    "input images' pixels) and <view>_overlay.png. A concat-fusion model needs all "
                    "three views; mean/attention models take any of them (e.g. --front alone).")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="checkpoint from `mvf train`")
    p.add_argument("--front", metavar="IMG", help="front view image")
    p.add_argument("--left", metavar="IMG", help="left view (the subject's left cheek)")
    p.add_argument("--right", metavar="IMG", help="right view (the subject's right cheek)")
    p.add_argument("--images", metavar="DIR", help="folder with front/left/right.<png|jpg>")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvf.reconstruct import check_views, gather_views, load_model, read_views, reconstruct, write_outputs
    from mvf.views import VIEWS

    paths = gather_views(args.front, args.left, args.right, args.images)
    model = load_model(args.checkpoint, args.device)
    check_views(model.net, tuple(v for v in VIEWS if v in paths), args.images or "inputs")
    images = read_views(paths)
    rec = reconstruct(model, images)
    written = write_outputs(rec, images, model.face, args.out,
                            extra={"checkpoint": str(args.checkpoint), "checkpoint_step": model.step})
    print(f"reconstructed from {', '.join(rec.views)} in {rec.seconds * 1000:.0f} ms -> "
          f"{len(written)} files in {args.out} (mesh.obj, mesh.ply, params.json, overlays)")
    return 0
