"""Weak-perspective camera: pose vectors, projection and the PyTorch3D equivalent.

Conventions (see docs/conventions.md):

* Model space: millimetres, right-handed, +x towards the subject's left, +y up, +z out of the
  face (towards a frontal viewer).
* A pose is ``P = (f, alpha, beta, gamma, tx, ty)``, shape ``(..., 6)``:
  ``f`` in pixels per millimetre, ``alpha`` (pitch, about x), ``beta`` (yaw, about y),
  ``gamma`` (roll, about z) in radians, ``tx, ty`` in pixels.
* Rotation ``R = Rz(gamma) @ Ry(beta) @ Rx(alpha)`` acting on column vectors (pitch first,
  then yaw, then roll).
* Image frame: pixels, origin at the top-left corner of the image, x right, y down; pixel
  ``(i, j)`` covers ``[i, i+1) x [j, j+1)`` so its centre is at ``(i + 0.5, j + 0.5)``.
* Projection: ``u = f * (R v)_x + tx`` and ``v = ty - f * (R v)_y``, i.e.
  ``Pr(v, P) = f * diag(1, -1) @ [[1,0,0],[0,1,0]] @ R @ v + t``: the model's +y (up) maps to
  image up. Depth grows away from the viewer: ``depth = DEPTH_OFFSET - (R v)_z`` (mm).
* Positive yaw turns the nose towards the image's right side (+u). Positive pitch turns the
  nose down in the image (chin towards the chest). Positive roll turns the face
  anticlockwise as seen in the image (the top of the head moves towards -u).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pytorch3d.renderer import OrthographicCameras

from renderer.rotations import euler_to_matrix

# Depth (mm) of the model origin in front of the camera. Any value larger than the head keeps
# every depth positive; only depth *differences* matter under weak perspective.
DEPTH_OFFSET = 1000.0

POSE_NAMES = ("f", "alpha", "beta", "gamma", "tx", "ty")


def make_pose(
    f: float, pitch_deg: float = 0.0, yaw_deg: float = 0.0, roll_deg: float = 0.0,
    tx: float = 0.0, ty: float = 0.0,
) -> torch.Tensor:
    """A single pose vector ``(6,)`` from degrees (a convenience for tests and tools)."""
    r = math.radians
    return torch.tensor([f, r(pitch_deg), r(yaw_deg), r(roll_deg), tx, ty], dtype=torch.float32)


def rotate(verts: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Rotate model-space points by the pose's rotation.

    Args:
        verts: ``(..., N, 3)`` mm.
        pose: ``(..., 6)``; its leading dims broadcast against ``verts``'.
    Returns:
        ``(..., N, 3)`` mm, ``R v`` for each point.
    """
    rot = euler_to_matrix(pose[..., 1:4])
    return verts @ rot.transpose(-1, -2)


def project(verts: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Weak-perspective projection to pixels.

    Args:
        verts: ``(..., N, 3)`` model space, mm. Typically ``(B, V, N, 3)`` or ``(B, 1, N, 3)``.
        pose: ``(..., 6)`` as in the module docstring, e.g. ``(B, V, 6)``.
    Returns:
        ``(..., N, 2)`` pixel coordinates (u right, v down, origin at the image's top-left).
    """
    rv = rotate(verts, pose)
    f = pose[..., 0, None]
    u = f * rv[..., 0] + pose[..., 4, None]
    v = pose[..., 5, None] - f * rv[..., 1]
    return torch.stack([u, v], -1)


def project_with_depth(verts: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Like `project` but also returns depth: ``(..., N, 3)`` = (u px, v px, depth mm).

    Depth is ``DEPTH_OFFSET - (R v)_z``: smaller is nearer the camera. It equals the z-buffer
    value that PyTorch3D reports with the cameras from `to_pytorch3d`.
    """
    rv = rotate(verts, pose)
    f = pose[..., 0, None]
    u = f * rv[..., 0] + pose[..., 4, None]
    v = pose[..., 5, None] - f * rv[..., 1]
    return torch.stack([u, v, DEPTH_OFFSET - rv[..., 2]], -1)


def perspective_prewarp(verts: torch.Tensor, pose: torch.Tensor, distance_mm: torch.Tensor | float,
                        ref_depth: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Points whose weak-perspective projection under ``pose`` is a pinhole camera's image of ``verts``.

    The pinhole camera looks along the view's -z axis from ``distance_mm`` in front of the rotated
    depth ``ref_depth`` (mm, ``(R v)_z``; there its magnification is ``f``), with its principal
    point at ``(tx, ty)``: ``u = f s (R v)_x + tx``, ``v = ty - f s (R v)_y`` with
    ``s = D / (D - ((R v)_z - ref_depth))``. Each rotated point is scaled by ``s`` in x and y and
    keeps its depth (depth order along a ray is preserved), then rotated back, so any
    weak-perspective renderer draws the perspective view (for synthetic data: real photos are
    taken from a finite distance).

    Args: verts ``(..., N, 3)`` mm; pose ``(..., 6)``; distance_mm and ref_depth scalars or
        ``(...)`` per pose. Returns ``(..., N, 3)`` mm (one mesh per pose).
    """
    rot = euler_to_matrix(pose[..., 1:4])  # (..., 3, 3)
    p = verts @ rot.transpose(-1, -2)
    s = pinhole_scale(p[..., 2], distance_mm, ref_depth)
    p = torch.stack([p[..., 0] * s, p[..., 1] * s, p[..., 2]], -1)
    return p @ rot


def pinhole_scale(depth: torch.Tensor, distance_mm: torch.Tensor | float,
                  ref_depth: torch.Tensor | float = 0.0) -> torch.Tensor:
    """A pinhole camera's magnification relative to the one at ``ref_depth``:
    ``D / (D - (z - z0))`` for rotated depths ``z`` ``(..., N)`` mm (+z towards the camera);
    ``distance_mm`` and ``ref_depth`` scalars or ``(...)``. Returns ``(..., N)``."""
    d = torch.as_tensor(distance_mm, dtype=depth.dtype, device=depth.device)[..., None]
    z0 = torch.as_tensor(ref_depth, dtype=depth.dtype, device=depth.device)[..., None]
    return d / (d - (depth - z0))


@dataclass(frozen=True)
class Pinhole:
    """A pinhole camera ``distance_mm`` in front of the model point ``centre`` (mm), for every view.

    A pose keeps its meaning: ``f`` is the magnification at ``centre``'s depth and the camera
    looks along the view's -z axis through the model origin's image ``(tx, ty)``
    (`perspective_prewarp`). None in place of a `Pinhole` means the weak-perspective camera.
    ``distance_mm`` may be a 0-d tensor, differentiable (a fit that estimates the distance).
    """

    distance_mm: float
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def ref_depth(self, pose: torch.Tensor) -> torch.Tensor:
        """``(...)`` rotated depth ``(R c)_z`` mm of ``centre`` under poses ``(..., 6)``."""
        c = torch.tensor(self.centre, dtype=pose.dtype, device=pose.device)
        return (euler_to_matrix(pose[..., 1:4]) @ c)[..., 2]

    def view_verts(self, verts: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Points ``(..., N, 3)`` whose weak-perspective image under ``pose`` ``(..., 6)`` is this
        camera's image of ``verts`` ``(..., N, 3)`` mm: one mesh per view for any renderer."""
        return perspective_prewarp(verts, pose, self.distance_mm, self.ref_depth(pose))


def view_meshes(verts: torch.Tensor, poses: torch.Tensor, camera: Pinhole | None) -> torch.Tensor:
    """One mesh per view, ``(V, N, 3)`` mm, for a subject's mesh ``(N, 3)`` and poses ``(V, 6)``:
    the mesh itself under weak perspective (``camera`` None), else `Pinhole.view_verts`."""
    meshes = verts[None].expand(poses.shape[0], -1, -1)
    return meshes if camera is None else camera.view_verts(meshes, poses)


def view_directions(pose: torch.Tensor) -> torch.Tensor:
    """Unit vector in model space pointing from the face towards the camera. ``(..., 6) -> (..., 3)``."""
    rot = euler_to_matrix(pose[..., 1:4])
    return rot[..., 2, :]  # R^T e_z


def pixels_to_ndc(uv: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates to PyTorch3D NDC (+x left, +y up; the shorter side spans [-1, 1]).

    Args:
        uv: ``(..., 2)`` pixels. image_size: ``(H, W)``.
    """
    h, w = image_size
    s = float(min(h, w))
    return torch.stack([(w - 2.0 * uv[..., 0]) / s, (h - 2.0 * uv[..., 1]) / s], -1)


def pixels_to_grid(uv: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates to `grid_sample` coordinates (``align_corners=False``), ``(..., 2)``."""
    h, w = image_size
    return torch.stack([2.0 * uv[..., 0] / w - 1.0, 2.0 * uv[..., 1] / h - 1.0], -1)


def to_pytorch3d(pose: torch.Tensor, image_size: tuple[int, int]):
    """PyTorch3D cameras that rasterize model-space meshes exactly where `project` puts them.

    Args:
        pose: ``(N, 6)`` poses, one per mesh in the batch handed to the rasterizer.
        image_size: ``(H, W)`` in pixels.
    Returns:
        ``pytorch3d.renderer.OrthographicCameras`` in NDC whose world->view transform is
        ``X_view = diag(-1, 1, -1) R v + (0, 0, DEPTH_OFFSET)`` (PyTorch3D's view space has +x
        left and +z away from the camera), with ``focal = 2 f / min(H, W)`` and the principal
        point at ``tx, ty`` converted to NDC. Its z-buffer equals `project_with_depth`'s depth.
    """
    pose = pose.reshape(-1, 6)
    h, w = image_size
    s = float(min(h, w))
    flip = torch.tensor([-1.0, 1.0, -1.0], dtype=pose.dtype, device=pose.device)
    rot_view = flip[:, None] * euler_to_matrix(pose[:, 1:4])  # (N, 3, 3), column convention
    t = torch.zeros(pose.shape[0], 3, dtype=pose.dtype, device=pose.device)
    t[:, 2] = DEPTH_OFFSET
    focal = (2.0 * pose[:, 0] / s)[:, None].expand(-1, 2)
    principal = pixels_to_ndc(pose[:, 4:6], image_size)
    return OrthographicCameras(
        focal_length=focal, principal_point=principal,
        R=rot_view.transpose(1, 2), T=t, in_ndc=True, device=pose.device,
    )
