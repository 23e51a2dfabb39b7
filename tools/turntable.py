"""Render a turntable of a (textured) face mesh: N yaw angles side by side in one PNG.

    .venv/bin/python tools/turntable.py --mesh OUT/mesh.obj --out turntable.png
        [--views 8] [--yaw -90 90] [--pitch 0] [--size 256] [--shading 0.35] [--frame face|mesh]
        [--no-caps]

``.obj`` meshes with UVs and a texture (``mesh.mtl`` -> ``mesh.png``, as `mvf reconstruct` and `mvf fit` write) are
rendered with the texture sampled per pixel; ``.ply`` meshes with their vertex colours;
anything else in plain grey. A Lambertian light from the viewer's upper left modulates the
colours by ``1 - shading + shading * max(0, n·l)`` so the shape reads too.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytorch3d.io import load_obj  # noqa: E402

from renderer import interpolate_vertex_attr, pixel_mask, rasterize  # noqa: E402
from renderer.camera import make_pose  # noqa: E402
from renderer.rotations import euler_to_matrix  # noqa: E402
from mvf.errors import MvfError  # noqa: E402
from mvf.fileio import write_image  # noqa: E402
from mvf.data.caps import HoleCaps  # noqa: E402
from mvf.face.mesh import vertex_normals  # noqa: E402
from mvf.face.model import FaceModel  # noqa: E402
from mvf.io import load_mesh  # noqa: E402


@dataclass
class RenderMesh:
    """What the turntable draws: ``verts`` ``(N, 3)`` mm, ``faces`` ``(F, 3)``, per-vertex
    ``colours`` ``(N, 3)`` and optionally ``uvs`` ``(N, 2)`` + ``texture`` ``(3, H, W)`` with a
    ``textured`` ``(N,)`` flag (vertices whose colour comes from the texture); ``frame`` =
    (centre ``(3,)``, radius mm) to fit in the view."""

    verts: torch.Tensor
    faces: torch.Tensor
    colours: torch.Tensor
    uvs: torch.Tensor | None
    texture: torch.Tensor | None
    textured: torch.Tensor
    frame: tuple[torch.Tensor, float]


def load_for_render(path: Path, caps: bool = True, frame: str = "face") -> RenderMesh:
    """Read a ``.obj`` (textured if it has UVs and a texture) or ``.ply`` (vertex colours).

    A textured OBJ's vertices are split where the UV layout has seams (one render vertex per
    distinct position/UV pair). For meshes of the mvf face model (same vertex count), ``caps``
    closes the eye and mouth holes with `mvf.data.caps.HoleCaps` (scenery: plain colours) and
    ``frame="face"`` centres the view on the 68 landmarks instead of the whole head and neck.
    """
    uvs = tex = None
    if path.suffix.lower() == ".obj":
        try:
            verts, faces_obj, aux = load_obj(path, load_textures=True)
        except Exception as e:  # corrupt file
            raise MvfError(f"{path}: unreadable OBJ ({e})") from None
        faces = faces_obj.verts_idx
        if aux.verts_uvs is not None and aux.texture_images:
            tex = next(iter(aux.texture_images.values())).permute(2, 0, 1).float()
            pairs = torch.stack([faces, faces_obj.textures_idx], -1).reshape(-1, 2)
            uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)
            split_of, uvs, faces_r = uniq[:, 0], aux.verts_uvs[uniq[:, 1]], inverse.reshape(-1, 3)
        colours = torch.full_like(verts, 0.75)
    else:
        mesh = load_mesh(path)
        verts, faces = torch.from_numpy(mesh.vertices).float(), torch.from_numpy(mesh.faces).long()
        colours = torch.full_like(verts, 0.75) if mesh.colours is None else torch.from_numpy(mesh.colours).float()
    centre = 0.5 * (verts.min(0).values + verts.max(0).values)
    radius = float((verts - centre).norm(dim=-1).max())
    model = None
    if caps or frame == "face":
        try:
            model = FaceModel.load()
        except MvfError:
            model = None
        if model is not None and model.n_verts != verts.shape[0]:
            model = None
    if model is not None and frame == "face":
        lm = verts[model.landmarks]
        centre = 0.5 * (lm.min(0).values + lm.max(0).values)
        radius = 1.25 * float((lm - centre).norm(dim=-1).max())
    rv, rf, rc = verts, faces, colours
    if uvs is not None:
        rv, rf, rc = verts[split_of], faces_r, colours[split_of]
    textured = torch.full((rv.shape[0],), uvs is not None)
    if model is not None and caps:
        hc = HoleCaps.from_model(model)
        normals = vertex_normals(verts, faces)
        cap_v = hc.vertices(verts[None], normals[None])[0]
        cap_c = hc.colours(np.array([0.35, 0.25, 0.18]), np.array([0.85, 0.83, 0.8]), np.array([0.2, 0.08, 0.08]))
        cap_f = hc.faces - model.n_verts + rv.shape[0]
        rv, rf = torch.cat([rv, cap_v]), torch.cat([rf, cap_f])
        rc = torch.cat([rc, torch.as_tensor(cap_c, dtype=torch.float32)])
        textured = torch.cat([textured, torch.zeros(cap_v.shape[0], dtype=torch.bool)])
        if uvs is not None:
            uvs = torch.cat([uvs, torch.zeros(cap_v.shape[0], 2)])
    return RenderMesh(rv, rf, rc, uvs, tex, textured, (centre, radius))


def turntable(mesh: RenderMesh, yaws: list[float], size: int = 256, pitch: float = 0.0,
              shading: float = 0.35, background: float = 1.0) -> np.ndarray:
    """``(size, len(yaws) * size, 3)`` float image: the mesh turned about its vertical axis."""
    verts, faces = mesh.verts, mesh.faces
    centre, radius = mesh.frame
    f = 0.48 * size / radius
    normals = vertex_normals(verts, faces)
    flag = mesh.textured.float()[:, None]
    uvs = mesh.uvs if mesh.uvs is not None else torch.zeros(verts.shape[0], 2)
    panels = []
    for yaw in yaws:
        pose = make_pose(f, pitch, yaw, 0.0)
        rc = euler_to_matrix(pose[1:4]) @ centre
        pose[4], pose[5] = size / 2 - f * rc[0], size / 2 + f * rc[1]
        frags = rasterize(verts[None], faces, pose[None], (size, size))
        mask = pixel_mask(frags)[0]
        light = tnf.normalize(torch.tensor([-0.4, 0.5, 1.0]) @ euler_to_matrix(pose[1:4]), dim=0)
        shade = 1.0 - shading + shading * (normals @ light).clamp_min(0.0)
        attrs = torch.cat([uvs, mesh.colours, flag, shade[:, None]], 1)
        pix = interpolate_vertex_attr(frags, attrs[None], faces)[0]  # (H, W, 7)
        rgb = pix[..., 2:5]
        if mesh.texture is not None:
            grid = torch.stack([pix[..., 0] * 2 - 1, 1 - pix[..., 1] * 2], -1)[None]  # v up -> row down
            tex = tnf.grid_sample(mesh.texture[None], grid, mode="bilinear", align_corners=False)[0]
            w = pix[..., 5:6].clamp(0, 1)
            rgb = w * tex.permute(1, 2, 0) + (1 - w) * rgb
        rgb = rgb * pix[..., 6:7]
        img = torch.where(mask[..., None], rgb, torch.full_like(rgb, background))
        panels.append(img.clamp(0, 1).numpy())
    return np.concatenate(panels, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mesh", required=True, help=".obj (textured) or .ply (vertex colours)")
    ap.add_argument("--out", required=True, help="output PNG")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--yaw", type=float, nargs=2, default=(-90.0, 90.0), metavar=("FROM", "TO"),
                    help="yaw range in degrees, both ends included (default -90 90)")
    ap.add_argument("--pitch", type=float, default=0.0, help="pitch in degrees (positive: from above)")
    ap.add_argument("--size", type=int, default=256, help="side of each view in pixels")
    ap.add_argument("--shading", type=float, default=0.35, help="strength of the shape shading in [0, 1]")
    ap.add_argument("--frame", choices=("face", "mesh"), default="face",
                    help="fit the face's landmarks (mvf face-model meshes) or the whole mesh in view")
    ap.add_argument("--no-caps", action="store_true", help="leave the eye and mouth holes open")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        path = Path(args.mesh)
        if not path.is_file():
            raise MvfError(f"{path}: mesh file not found")
        if args.views < 1 or args.size < 16:
            raise MvfError("--views must be >= 1 and --size >= 16")
        mesh = load_for_render(path, caps=not args.no_caps, frame=args.frame)
        n = args.views
        yaws = [args.yaw[0] + (args.yaw[1] - args.yaw[0]) * i / max(n - 1, 1) for i in range(n)]
        # positive pitch in mvf turns the nose down, i.e. the camera looks from above
        sheet = turntable(mesh, yaws, args.size, args.pitch, args.shading)
        write_image(args.out, sheet)
    except MvfError as e:
        print(f"turntable: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({n} views, yaw {', '.join(f'{y:.0f}' for y in yaws)} deg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
