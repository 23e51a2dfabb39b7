"""The ``--device`` option of the commands that take one: checked before any work starts."""
from __future__ import annotations

import torch

from mvf.errors import MvfError


def check_device(spec: str | torch.device, option: str = "--device") -> torch.device:
    """The torch device ``spec`` names, checked to exist here (a tiny tensor is made on it);
    `MvfError` ``"--device cuda:7: ..."`` for a malformed name or a device that is not there."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise MvfError(f"{option} {spec}: not a torch device (e.g. cpu, cuda, cuda:0)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MvfError(f"{option} {spec}: CUDA is not available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise MvfError(f"{option} {spec}: no such GPU ({count} visible: cuda:0..cuda:{count - 1})")
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:
        reason = (str(e).strip().splitlines() or ["unavailable"])[0]
        raise MvfError(f"{option} {spec}: device not available here ({reason})") from None
    return device
