"""Rotations in the pose convention: Euler angles (pitch, yaw, roll) <-> matrices, torch and numpy.

``R = Rz(gamma) @ Ry(beta) @ Rx(alpha)`` acting on column vectors (docs/conventions.md).
"""
from __future__ import annotations

import numpy as np
import torch


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from Euler angles.

    Args:
        angles: ``(..., 3)`` radians, ordered (alpha = pitch about x, beta = yaw about y,
            gamma = roll about z).
    Returns:
        ``(..., 3, 3)`` ``R = Rz(gamma) @ Ry(beta) @ Rx(alpha)``.
    """
    a, b, g = angles.unbind(-1)
    ca, sa = torch.cos(a), torch.sin(a)
    cb, sb = torch.cos(b), torch.sin(b)
    cg, sg = torch.cos(g), torch.sin(g)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(*a.shape, 3, 3)
    ry = torch.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(*a.shape, 3, 3)
    rz = torch.stack([cg, -sg, zero, sg, cg, zero, zero, zero, one], -1).reshape(*a.shape, 3, 3)
    return rz @ ry @ rx


def matrix_to_euler(rot: torch.Tensor) -> torch.Tensor:
    """Inverse of `euler_to_matrix` for |beta| < pi/2. ``(..., 3, 3) -> (..., 3)`` radians."""
    beta = torch.asin((-rot[..., 2, 0]).clamp(-1.0, 1.0))
    alpha = torch.atan2(rot[..., 2, 1], rot[..., 2, 2])
    gamma = torch.atan2(rot[..., 1, 0], rot[..., 0, 0])
    return torch.stack([alpha, beta, gamma], -1)


def rotation_derivatives(angles: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3, 3)``: d R / d alpha, d R / d beta, d R / d gamma of `euler_to_matrix` at
    ``angles`` ``(..., 3)`` radians (``R = Rz(γ) Ry(β) Rx(α)``)."""
    a, b, g = angles.unbind(-1)
    ca, sa, cb, sb, cg, sg = torch.cos(a), torch.sin(a), torch.cos(b), torch.sin(b), torch.cos(g), torch.sin(g)
    one, zero = torch.ones_like(a), torch.zeros_like(a)

    def mat(*entries):
        return torch.stack(entries, -1).reshape(*a.shape, 3, 3)

    rx, drx = mat(one, zero, zero, zero, ca, -sa, zero, sa, ca), mat(zero, zero, zero, zero, -sa, -ca, zero, ca, -sa)
    ry, dry = mat(cb, zero, sb, zero, one, zero, -sb, zero, cb), mat(-sb, zero, cb, zero, zero, zero, -cb, zero, -sb)
    rz, drz = mat(cg, -sg, zero, sg, cg, zero, zero, zero, one), mat(-sg, -cg, zero, cg, -sg, zero, zero, zero, zero)
    return torch.stack([rz @ ry @ drx, rz @ dry @ rx, drz @ ry @ rx], -3)


def euler_deg_to_matrix_np(angles_deg) -> np.ndarray:
    """numpy `euler_to_matrix`: ``(..., 3)`` (pitch, yaw, roll) degrees -> ``(..., 3, 3)`` float64."""
    return euler_to_matrix(torch.from_numpy(np.radians(np.asarray(angles_deg, np.float64)))).numpy()


def matrix_to_euler_deg_np(rot: np.ndarray) -> np.ndarray:
    """numpy `matrix_to_euler`: ``(..., 3, 3)`` -> ``(..., 3)`` (pitch, yaw, roll) degrees, float64."""
    return np.degrees(matrix_to_euler(torch.from_numpy(np.asarray(rot, np.float64))).numpy())
