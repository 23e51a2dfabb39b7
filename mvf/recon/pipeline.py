"""Images in the training framing -> a face: load a checkpoint, predict, write mesh/params/overlays.

Inputs are square crops framed like the synthetic training data (the face's landmark box
filling roughly half the image, centred). Images of another size are resized to the network's
input size; the predicted poses are scaled back to the input images' pixels.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf

from mvf.errors import MvfError, file_error
from mvf.face.model import FaceModel
from mvf.fileio import find_view_image, read_image, write_image
from mvf.net.network import MVFNet, build_network
from mvf.train.checkpoint import load_checkpoint, load_model_state
from mvf.train.config import TrainConfig, config_from_dict
from renderer.views import VIEWS

OVERLAY_ALPHA = 0.55
MESH_GREY = (0.78, 0.78, 0.78)


@dataclass
class LoadedModel:
    net: MVFNet
    face: FaceModel
    cfg: TrainConfig
    step: int
    path: Path


@dataclass
class Reconstruction:
    """A prediction: coefficients, the mesh (mm) and per-view poses in input-image pixels."""

    views: tuple[str, ...]
    id: np.ndarray  # (K_id,)
    exp: np.ndarray  # (K_exp,)
    pose: dict[str, np.ndarray]  # view -> (6,) f px/mm, alpha, beta, gamma rad, tx, ty px
    verts: np.ndarray  # (N, 3) mm
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)  # view -> (68, 2) px
    seconds: float = 0.0


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Network + face model from a checkpoint; `MvfError` if corrupt or it doesn't fit."""
    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        cfg = config_from_dict(ckpt["config"])
    except MvfError as e:
        raise file_error(path, f"checkpoint carries an invalid config ({e})") from None
    face = FaceModel.load(cfg.model.face_model, device=device)
    trained_on = ckpt.get("face_model")
    if trained_on and face.asset_id != "unknown" and trained_on != face.asset_id:
        raise file_error(path, f"trained with face model {trained_on}, but the asset is {face.asset_id}")
    model_cfg = dataclasses.replace(cfg.model, pretrained=None)  # weights come from the checkpoint
    net = build_network(model_cfg, face)
    load_model_state(net, ckpt["model"], path)
    return LoadedModel(net.to(device).eval(), face, cfg, int(ckpt["step"]), path)


def gather_views(front: str | None = None, left: str | None = None, right: str | None = None,
                 images_dir: str | None = None) -> dict[str, Path]:
    """View name -> image path, from ``--front/--left/--right`` or an ``--images`` folder."""
    given = {v: p for v, p in zip(VIEWS, (front, left, right)) if p}
    if images_dir and given:
        raise MvfError("give either --images DIR or --front/--left/--right, not both")
    if images_dir:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise file_error(folder, "image folder not found")
        found = {}
        for v in VIEWS:
            try:
                found[v] = find_view_image(folder, v)
            except MvfError:
                pass
        if not found:
            raise file_error(folder, "no front/left/right images (front.png, left.png, right.png)")
        return found
    if not given:
        raise MvfError("no input images: give --front F [--left L --right R] or --images DIR")
    return {v: Path(p) for v, p in given.items()}


def check_views(net: MVFNet, views: tuple[str, ...], where: str = "inputs") -> None:
    """`MvfError` when ``views`` don't suit the network (concat needs front, left and right)."""
    if net.cfg.fusion == "concat" and views != VIEWS:
        missing = [v for v in VIEWS if v not in views]
        raise MvfError(f"{where}: missing view(s) {', '.join(missing)}: this model's concat fusion "
                       f"needs exactly 3 images (front, left, right), got {len(views)}")


def prepare_images(images: dict[str, np.ndarray], size: int, device) -> tuple[torch.Tensor, dict[str, float]]:
    """``(1, V, 3, S, S)`` float tensor in VIEWS order and per-view scale (input px per network px)."""
    tensors, scales = [], {}
    for view, img in images.items():
        h, w = img.shape[:2]
        if h != w:
            raise MvfError(f"{view} image is {w}x{h}: expected a square crop in the training framing")
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)[None]
        if h != size:
            t = tnf.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        tensors.append(t[0])
        scales[view] = h / size
    return torch.stack(tensors)[None].to(device), scales


@torch.no_grad()
def reconstruct(model: LoadedModel, images: dict[str, np.ndarray]) -> Reconstruction:
    """Predict the face from ``images`` (view name -> ``(H, W, 3)`` uint8, square)."""
    from mvf.losses.supervised import LandmarkProjector
    from mvf.recon.refine import predict

    views = tuple(v for v in VIEWS if v in images)
    check_views(model.net, views)
    device = next(model.net.parameters()).device
    x, scales = prepare_images({v: images[v] for v in views}, model.net.cfg.image_size, device)
    t0 = time.perf_counter()
    out = predict(model.net, model.face, x, views=views)
    seconds = time.perf_counter() - t0
    pose = out["pose"][0].clone()  # (V, 6)
    k = torch.tensor([scales[v] for v in views], device=device)
    pose[:, 0] *= k
    pose[:, 4] *= k
    pose[:, 5] *= k
    verts = model.face.decode(out["id"], out["exp"])
    lm = LandmarkProjector(model.face)(verts, pose[None])[0]
    return Reconstruction(
        views=views, id=out["id"][0].cpu().numpy(), exp=out["exp"][0].cpu().numpy(),
        pose={v: pose[i].cpu().numpy() for i, v in enumerate(views)}, verts=verts[0].cpu().numpy(),
        landmarks={v: lm[i].cpu().numpy() for i, v in enumerate(views)}, seconds=seconds)


def overlay(image: np.ndarray, verts: np.ndarray, pose: np.ndarray, face: FaceModel,
            landmarks: np.ndarray | None = None) -> np.ndarray:
    """The shaded mesh blended over ``image`` (``(H, W, 3)`` uint8), landmarks as dots: uint8."""
    from renderer import render

    h, w = image.shape[:2]
    v = torch.as_tensor(verts, dtype=torch.float32)[None]
    p = torch.as_tensor(pose, dtype=torch.float32)[None]
    colours = torch.tensor(MESH_GREY).expand(1, v.shape[1], 3)
    rgba = render(v, face.faces.cpu(), colours, p, (h, w))[0].numpy()
    base = image.astype(np.float32) / 255.0
    alpha = OVERLAY_ALPHA * rgba[..., 3:4]
    out = base * (1.0 - alpha) + rgba[..., :3] * alpha
    if landmarks is not None:
        r = max(1, round(h / 160))
        for u, vv in landmarks:
            i, j = int(vv), int(u)
            if 0 <= i < h and 0 <= j < w:
                out[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1] = (0.1, 0.9, 0.2)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_outputs(rec: Reconstruction, images: dict[str, np.ndarray], face: FaceModel,
                  out_dir: str | Path, extra: dict | None = None) -> list[Path]:
    """Write ``mesh.obj`` (with UVs), ``mesh.ply``, ``params.json`` and ``<view>_overlay.png``."""
    from mvf.io.meshio import save_mesh
    from mvf.face.params import FaceParams, save_params

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    written += save_mesh(out / "mesh.obj", rec.verts, face.faces, verts_uvs=face.verts_uvs,
                         faces_uvs=face.faces_uvs)
    written += save_mesh(out / "mesh.ply", rec.verts, face.faces)
    info = {"views": list(rec.views), "pose_units": "f px/mm, alpha/beta/gamma rad, tx/ty px",
            "inference_seconds": round(rec.seconds, 4), **(extra or {})}
    save_params(out / "params.json", FaceParams(rec.id, rec.exp, dict(rec.pose), extra=info))
    written.append(out / "params.json")
    for view in rec.views:
        path = out / f"{view}_overlay.png"
        write_image(path, overlay(images[view], rec.verts, rec.pose[view], face, rec.landmarks.get(view)))
        written.append(path)
    return written


def read_views(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """Read each view's image (``(H, W, 3)`` uint8); `MvfError` naming an unreadable file."""
    return {v: read_image(p) for v, p in paths.items()}
