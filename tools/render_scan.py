"""Render a textured face scan into a front/left/right check case laid out like scan-lps.

    .venv/bin/python tools/render_scan.py --mesh SCAN.obj --landmarks LM.txt|LM.ljson --out DIR
        [--eye-corners-mm 91] [--yaw 30] [--pitch -15] [--size 512] [--distance 1000] [--fov 12.41]

Writes ``DIR/front.png``, ``left.png``, ``right.png``, ``gt.ply`` (the scan in mm, face frame, vertex
colours), ``gt_landmarks.txt`` (68 x 3, face frame) and ``cameras.json``, with the protocol of
``../shared/samples/scan-lps/README.md``: the face frame of the 68 iBUG landmarks (origin at the
eye-centre midpoint, +x to the subject's left, +y from the mouth centre to the eyes, +z out of the
face), the scan scaled so the outer eye corners (36, 45) are ``--eye-corners-mm`` apart, a pinhole
camera ``--distance`` mm from the midpoint of brow and chin, head pose Ry(yaw) Rx(pitch) (left view:
yaw -30, showing the subject's left cheek), ambient light only (the texture carries the lighting),
2x supersampled, on a grey vertical gradient. Then ``mvf reconstruct`` on the three PNGs and
``mvf evaluate --gt DIR/gt.ply --gt-landmarks DIR/gt_landmarks.txt`` score a reconstruction of it
(``tools/bench_real.py --scan DIR``).

The landmarks are the scan's own 68 iBUG points (a text file of 68 rows ``x y z`` or a menpo
``.ljson``), in the scan's units. A second real scan to check with: ``pip download --no-deps
menpo3d==0.8.6`` carries ``menpo3d/data/james.obj`` (+ ``.mtl``, ``.jpg``) and ``james.ljson``
(BSD-3, Imperial College London; not shipped with mvf).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytorch3d.renderer import TexturesUV, TexturesVertex  # noqa: E402
from pytorch3d.structures import Meshes  # noqa: E402

from renderer import rasterize  # noqa: E402
from renderer.rotations import euler_deg_to_matrix_np  # noqa: E402
from mvf.errors import MvfError, file_error  # noqa: E402
from mvf.fileio import atomic_path, write_image, write_json  # noqa: E402
from mvf.io import Mesh, load_mesh, save_mesh  # noqa: E402

VIEW_YAW_SIGN = {"front": 0.0, "left": -1.0, "right": 1.0}
# menpo's labelled 68-point groups (image-left = the subject's right first) in iBUG-68 order
MENPO_IBUG68_ORDER = ("chin", "leyebrow", "reyebrow", "nose", "leye", "reye", "mouth")
BACKGROUND_TOP = np.array([153.0, 153.0, 158.0]) / 255.0
BACKGROUND_BOTTOM = np.array([107.0, 107.0, 112.0]) / 255.0


def read_landmarks(path: Path) -> np.ndarray:
    """68 x 3 iBUG points from a text file (``#`` comments) or a menpo ``.ljson`` (its labelled
    groups put in iBUG-68 order: chin, brows, nose, eyes, mouth)."""
    try:
        if path.suffix.lower() == ".ljson":
            group = json.loads(path.read_text())["groups"]["LJSON"]
            points = np.asarray(group["landmarks"]["points"], float)
            masks = {label["label"]: label["mask"] for label in group.get("labels", [])}
            if set(masks) == set(MENPO_IBUG68_ORDER):
                points = points[sum((masks[name] for name in MENPO_IBUG68_ORDER), [])]
        else:
            points = np.loadtxt(path, comments="#", dtype=float)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise file_error(path, f"cannot read 68 x 3 landmarks ({err})") from None
    if points.shape != (68, 3) or not np.isfinite(points).all():
        raise file_error(path, f"expected 68 finite x y z rows, got shape {points.shape}")
    return points


def face_frame(landmarks: np.ndarray, eye_corners_mm: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The scan-lps face frame of 68 iBUG points: ``x_face = scale * R @ (x - origin)``.

    Returns R (3, 3), origin (3,) in scan units and scale (mm per scan unit)."""
    right_eye, left_eye = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    origin = (right_eye + left_eye) / 2
    x = left_eye - right_eye
    x /= np.linalg.norm(x)
    y = origin - landmarks[48:68].mean(0)
    y -= x * (y @ x)
    y /= np.linalg.norm(y)
    rotation = np.stack([x, y, np.cross(x, y)])
    scale = eye_corners_mm / np.linalg.norm(landmarks[45] - landmarks[36])
    return rotation, origin, float(scale)


def view_camera(yaw_deg: float, pitch_deg: float, target: np.ndarray, distance_mm: float, fov_deg: float,
                size: int) -> dict:
    """One view's camera as in scan-lps ``cameras.json`` (mvf head pose, OpenCV R/t/K, centre)."""
    head = euler_deg_to_matrix_np([pitch_deg, yaw_deg, 0.0])  # Ry(yaw) Rx(pitch), mvf's pose convention
    r_cv = np.diag([1.0, -1.0, -1.0]) @ head
    t_cv = -r_cv @ target + np.array([0.0, 0.0, distance_mm])
    focal = (size / 2) / np.tan(np.radians(fov_deg) / 2)
    return {
        "yaw_deg": yaw_deg, "pitch_deg": pitch_deg, "roll_deg": 0.0, "distance_mm": distance_mm,
        "fov_deg": fov_deg, "image_size": [size, size], "target_mm": target.round(4).tolist(),
        "camera_position_mm": (target + distance_mm * head.T @ np.array([0.0, 0.0, 1.0])).round(4).tolist(),
        "R_world_to_cam_opencv": r_cv.round(8).tolist(), "t_world_to_cam_opencv_mm": t_cv.round(4).tolist(),
        "K": [[round(focal, 4), 0, size / 2], [0, round(focal, 4), size / 2], [0, 0, 1]],
    }


def scan_meshes(mesh: Mesh, verts_mm: np.ndarray) -> Meshes:
    """The scan as a PyTorch3D mesh with its texture (UVs) or vertex colours (else grey)."""
    verts = torch.as_tensor(verts_mm, dtype=torch.float32)[None]
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64)[None]
    if mesh.texture is not None and mesh.verts_uvs is not None:
        textures = TexturesUV(maps=torch.as_tensor(mesh.texture, dtype=torch.float32)[None],
                              faces_uvs=torch.as_tensor(mesh.faces_uvs, dtype=torch.int64)[None],
                              verts_uvs=torch.as_tensor(mesh.verts_uvs, dtype=torch.float32)[None])
    else:
        colours = mesh.colours if mesh.colours is not None else np.full_like(verts_mm, 0.7)
        textures = TexturesVertex(torch.as_tensor(colours, dtype=torch.float32)[None])
    return Meshes(verts, faces, textures)


def render_view(meshes: Meshes, camera: dict, supersample: int = 2) -> np.ndarray:
    """(H, W, 3) float image in [0, 1]: ambient-only colours over the grey gradient.

    The pinhole image is drawn by mvf's fast rasterizer (`renderer.rasterize`, identical to
    PyTorch3D's coverage and ~100x faster on the CPU) on the scan's vertices moved to pixel
    coordinates (x = u, y = -v, z = -depth: the identity pose of `renderer.camera.project`);
    barycentrics are screen-space (not perspective-corrected: < 0.01 px at 1000 mm)."""
    size = camera["image_size"][0] * supersample
    k = np.asarray(camera["K"], dtype=np.float64)
    k[:2] *= supersample
    verts = meshes.verts_padded()[0].double()
    rot = torch.tensor(camera["R_world_to_cam_opencv"], dtype=torch.float64)
    cam = verts @ rot.T + torch.tensor(camera["t_world_to_cam_opencv_mm"], dtype=torch.float64)
    u = k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2]
    v = k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]
    screen = torch.stack([u, -v, -cam[:, 2]], -1).float()
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    fragments = rasterize(screen[None], meshes.faces_padded()[0], identity, size, backend="fast")
    colours = meshes.sample_textures(fragments)[0, :, :, 0, :3]
    ramp = torch.linspace(0.0, 1.0, size)[:, None, None]
    background = torch.as_tensor(BACKGROUND_TOP, dtype=torch.float32) * (1 - ramp) + \
        torch.as_tensor(BACKGROUND_BOTTOM, dtype=torch.float32) * ramp
    hit = (fragments.pix_to_face[0, :, :, :1] >= 0).float()
    image = colours * hit + background * (1 - hit)
    image = tnf.avg_pool2d(image.permute(2, 0, 1)[None], supersample)[0].permute(1, 2, 0)
    return image.clamp(0, 1).numpy()


def vertex_colours(mesh: Mesh) -> np.ndarray | None:
    """Per-vertex colours: the file's, else the texture at each vertex's first UV, else None."""
    if mesh.colours is not None:
        return mesh.colours
    if mesh.texture is None or mesh.verts_uvs is None:
        return None
    uv_of_vertex = np.zeros(len(mesh.vertices), dtype=np.int64)
    uv_of_vertex[mesh.faces.reshape(-1)[::-1]] = mesh.faces_uvs.reshape(-1)[::-1]
    h, w = mesh.texture.shape[:2]
    uv = mesh.verts_uvs[uv_of_vertex]
    cols = np.clip((uv[:, 0] * (w - 1)).round().astype(int), 0, w - 1)
    rows = np.clip(((1 - uv[:, 1]) * (h - 1)).round().astype(int), 0, h - 1)
    return mesh.texture[rows, cols, :3]


def render_case(mesh_path: Path, landmarks_path: Path, out: Path, eye_corners_mm: float = 91.0,
                yaw_deg: float = 30.0, pitch_deg: float = -15.0, size: int = 512, distance_mm: float = 1000.0,
                fov_deg: float = 12.41) -> dict:
    """Write the case (see the module docstring); returns its ``cameras.json`` content."""
    mesh = load_mesh(mesh_path)
    landmarks = read_landmarks(landmarks_path)
    rotation, origin, scale = face_frame(landmarks, eye_corners_mm)
    to_frame = lambda p: scale * (p - origin) @ rotation.T  # noqa: E731
    verts_mm, landmarks_mm = to_frame(mesh.vertices), to_frame(landmarks)
    brow_y, chin_y = landmarks_mm[17:27, 1].mean(), landmarks_mm[8, 1]
    target = np.array([0.0, (brow_y + chin_y) / 2, 0.0])
    meshes = scan_meshes(mesh, verts_mm)
    out.mkdir(parents=True, exist_ok=True)
    views = {}
    for name, sign in VIEW_YAW_SIGN.items():
        views[name] = view_camera(sign * yaw_deg, pitch_deg, target, distance_mm, fov_deg, size)
        write_image(out / f"{name}.png", render_view(meshes, views[name]))
    save_mesh(out / "gt.ply", verts_mm, mesh.faces, colours=vertex_colours(mesh))
    header = ("68 iBUG-68 landmarks (x y z mm, face frame: origin = eye-centre midpoint, +x subject's left, "
              f"+y up, +z out of the face); from {landmarks_path.name}; 0-based point index 30 = nose tip")
    with atomic_path(out / "gt_landmarks.txt") as tmp:  # like the images, mesh and cameras.json
        np.savetxt(tmp, landmarks_mm, fmt="%.4f", header=header)
    cameras = {"convention": "as ../shared/samples/scan-lps/cameras.json", "views": views,
               "source": {"mesh": str(mesh_path), "landmarks": str(landmarks_path), "mm_per_unit": scale}}
    write_json(out / "cameras.json", cameras)
    return cameras


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mesh", type=Path, required=True, help="textured .obj or coloured .ply scan")
    parser.add_argument("--landmarks", type=Path, required=True, help="68 x 3 iBUG points (text or .ljson)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--eye-corners-mm", type=float, default=91.0)
    parser.add_argument("--yaw", type=float, default=30.0)
    parser.add_argument("--pitch", type=float, default=-15.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--distance", type=float, default=1000.0)
    parser.add_argument("--fov", type=float, default=12.41)
    args = parser.parse_args(argv)
    try:
        render_case(args.mesh, args.landmarks, args.out, args.eye_corners_mm, args.yaw, args.pitch, args.size,
                    args.distance, args.fov)
    except MvfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/front.png left.png right.png gt.ply gt_landmarks.txt cameras.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
