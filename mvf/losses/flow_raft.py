"""torchvision RAFT as a frozen, differentiable flow estimator loaded from a local weights file.

Weights are never downloaded: the model is built with ``weights=None`` and loaded from the file
the user names. The network is frozen (no parameter gradients, always in eval mode) but stays
differentiable with respect to its input images.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mvf.errors import file_error

VARIANTS = ("small", "large")
MIN_SIZE = 128  # pixels: RAFT pools its 1/8-resolution correlation volume 3 times


def _build(variant: str) -> torch.nn.Module:
    from torchvision.models.optical_flow import raft_large, raft_small

    return (raft_small if variant == "small" else raft_large)(weights=None, progress=False)


def load_raft(path: str | Path, variant: str) -> torch.nn.Module:
    """torchvision ``raft_<variant>`` with the state dict in ``path``; `MvfError` naming the file if
    it is missing, unreadable or does not match the architecture."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "RAFT weights file not found (weights are never downloaded; "
                               "give a local .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not usable
        raise file_error(path, f"not a readable PyTorch weights file ({type(e).__name__})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise file_error(path, "not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = _build(variant)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise file_error(path, f"does not match torchvision raft_{variant}: {len(missing)} missing, "
                               f"{len(unexpected)} unexpected keys (e.g. '{first}')")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise file_error(path, f"does not match torchvision raft_{variant}: shape of '{bad[0]}' "
                               f"is {tuple(state[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class RaftFlow(torch.nn.Module):
    """Frozen RAFT: ``(N, 3, H, W)`` images in [0, 1] -> flow ``(N, 2, H, W)`` in pixels.

    Inputs are mapped to [-1, 1] and replicate-padded to a multiple of 8 and at least
    ``MIN_SIZE`` (RAFT's correlation pyramid needs 128 px); the flow is cropped back.
    """

    def __init__(self, weights: str | Path, variant: str = "small", updates: int = 12) -> None:
        super().__init__()
        self.net = load_raft(weights, variant)
        self.updates = updates

    def train(self, mode: bool = True) -> "RaftFlow":
        """Keep the network in eval mode whatever the caller asks (it is frozen)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, img1: Tensor, img2: Tensor) -> Tensor:
        h, w = img1.shape[-2:]
        ph = max(MIN_SIZE, h + (-h) % 8) - h
        pw = max(MIN_SIZE, w + (-w) % 8) - w
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x1 = F.pad(img1 * 2.0 - 1.0, pad, mode="replicate")
        x2 = F.pad(img2 * 2.0 - 1.0, pad, mode="replicate")
        flow = self.net(x1.contiguous(), x2.contiguous(), num_flow_updates=self.updates)[-1]
        return flow[..., pad[2]:pad[2] + h, pad[0]:pad[0] + w]
