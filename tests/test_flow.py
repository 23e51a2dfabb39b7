"""Flow estimator: known synthetic flows, masks, gradients, helpers and the RAFT wrapper."""
from __future__ import annotations

import math

import pytest
import torch

from mvf.config import from_dict
from mvf.errors import MvfError
from mvf.losses.flow import FlowConfig, build_flow, flow_magnitude_loss, flow_to_rgb, warp_image

BORDER = 12  # pixels left out of error statistics


def pixel_grid(h: int, w: int) -> torch.Tensor:
    """``(1, 2, H, W)`` float64 pixel-centre coordinates (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack((xs, ys))[None].double()


def texture(pos: torch.Tensor, seed: int) -> torch.Tensor:
    """Smooth random RGB texture in [0, 1] evaluated exactly at positions ``(1, 2, H, W)``:
    per channel a sum of 24 plane waves with wavelengths 12-48 px."""
    g = torch.Generator().manual_seed(seed)
    x, y = pos[:, 0, :, :, None], pos[:, 1, :, :, None]
    chans = []
    for _ in range(3):
        k = 2 * math.pi / (12 + 36 * torch.rand(24, generator=g, dtype=torch.float64))
        ang = 2 * math.pi * torch.rand(24, generator=g, dtype=torch.float64)
        phase = 2 * math.pi * torch.rand(24, generator=g, dtype=torch.float64)
        amp = torch.rand(24, generator=g, dtype=torch.float64)
        wave = amp * torch.sin(k * (x * torch.cos(ang) + y * torch.sin(ang)) + phase)
        chans.append(0.5 + 0.5 * wave.sum(-1) / amp.sum())
    return torch.stack(chans, 1)


def mapped_pair(size: int, matrix, shift, seed: int = 0):
    """Images with the exact flow of ``q = c + M (p - c) + shift`` (c = image centre):
    ``img1(p) = T(p)`` and ``img2(q) = T(φ⁻¹(q))``, so ``img1(p) = img2(p + flow(p))``."""
    p = pixel_grid(size, size)
    c = torch.full((1, 2, 1, 1), size / 2, dtype=torch.float64)
    m = torch.as_tensor(matrix, dtype=torch.float64)
    t = torch.as_tensor(shift, dtype=torch.float64).view(1, 2, 1, 1)
    phi = torch.einsum("ij,njhw->nihw", m, p - c) + c + t
    pre = torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), p - c - t) + c
    return texture(p, seed).float(), texture(pre, seed).float(), (phi - p).float()


def epe(flow: torch.Tensor, truth: torch.Tensor, region: torch.Tensor | None = None) -> float:
    """Mean end-point error in pixels, away from the border (and inside ``region`` (H, W))."""
    err = (flow - truth).norm(dim=1)[0]
    keep = torch.zeros_like(err, dtype=torch.bool)
    keep[BORDER:-BORDER, BORDER:-BORDER] = True
    if region is not None:
        keep &= region
    return err[keep].mean().item()


@pytest.mark.parametrize("shift", [(1.7, -0.9), (-6.4, 3.3)])
def test_recovers_translation(shift):
    img1, img2, truth = mapped_pair(96, torch.eye(2), shift)
    flow = build_flow()(img1, img2)
    assert flow.shape == (1, 2, 96, 96)
    assert epe(flow, truth) < 0.3
    # the convention: warping image 2 by the flow reproduces image 1
    before = (img2 - img1)[..., BORDER:-BORDER, BORDER:-BORDER].abs().mean()
    after = (warp_image(img2, flow) - img1)[..., BORDER:-BORDER, BORDER:-BORDER].abs().mean()
    assert after < 0.1 * before


def test_recovers_affine_flow():
    th, s = math.radians(4.0), 1.05
    rot = [[s * math.cos(th), -s * math.sin(th)], [s * math.sin(th), s * math.cos(th)]]
    img1, img2, truth = mapped_pair(128, rot, (0.8, 0.5), seed=3)
    assert truth.norm(dim=1).max() > 5.0  # a real affine field, up to several pixels
    flow = build_flow()(img1, img2)
    assert epe(flow, truth) < 0.3


def test_zero_flow_for_identical_images():
    img = mapped_pair(64, torch.eye(2), (0.0, 0.0), seed=5)[0]
    est = build_flow()
    assert est(img, img).abs().max() < 1e-3
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 20:40, 10:30] = 0.0
    assert est(img, img, mask).abs().max() < 1e-3


def test_mask_excludes_corrupted_region():
    img1, img2, truth = mapped_pair(96, torch.eye(2), (1.7, -0.9), seed=1)
    g = torch.Generator().manual_seed(7)
    y0, x0, s = 32, 24, 32
    img1[..., y0:y0 + s, x0:x0 + s] = torch.rand(1, 3, s, s, generator=g)
    img2[..., y0:y0 + s, x0:x0 + s] = torch.rand(1, 3, s, s, generator=g)
    mask = torch.ones(1, 1, 96, 96)
    mask[..., y0:y0 + s, x0:x0 + s] = 0.0
    valid = mask[0, 0].bool()
    near = torch.zeros_like(valid)
    near[y0 - 8:y0 + s + 8, x0 - 8:x0 + s + 8] = True
    near &= valid
    est = build_flow()
    masked = est(img1, img2, mask)
    unmasked = est(img1, img2)
    assert epe(masked, truth, valid) < 0.15
    assert epe(masked, truth, near) < 0.15
    assert epe(unmasked, truth, near) > 3 * epe(masked, truth, near)  # the corruption does hurt
    # invalid pixels take their flow from the neighbourhood
    assert epe(masked, truth, ~valid) < 0.3


def test_gradcheck_both_images():
    cfg = FlowConfig(levels=2, finest_level=0, iterations=2, window=6)
    img1, img2, _ = mapped_pair(16, torch.eye(2), (0.6, -0.4), seed=2)
    a = img1.double().requires_grad_(True)
    b = img2.double().requires_grad_(True)
    mask = torch.ones(1, 1, 16, 16, dtype=torch.float64)
    mask[..., :5, :6] = 0.0
    est = build_flow(cfg)
    assert torch.autograd.gradcheck(lambda x, y: est(x, y, mask), (a, b), eps=1e-6, atol=1e-6,
                                     rtol=1e-4, fast_mode=True)


def test_loss_gradients_match_central_differences():
    """d/dε L(img + ε·d) at the default settings, for both images separately."""
    img1, img2, _ = mapped_pair(48, torch.eye(2), (1.2, 0.7), seed=4)
    a = img1.double().requires_grad_(True)
    b = img2.double().requires_grad_(True)
    mask = torch.ones(1, 1, 48, 48, dtype=torch.float64)
    mask[..., 30:, :20] = 0.0
    est = build_flow()

    def loss(x, y):
        return flow_magnitude_loss(est(x, y, mask), mask)

    ga, gb = torch.autograd.grad(loss(a, b), (a, b))
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    h = 1e-5
    with torch.no_grad():
        for _ in range(2):
            for which in ("a", "b"):
                d = torch.randn(a.shape, generator=g, dtype=torch.float64)
                da, db = (d, 0 * d) if which == "a" else (0 * d, d)
                num = (loss(a + h * da, b + h * db) - loss(a - h * da, b - h * db)) / (2 * h)
                ana = (ga * da).sum() + (gb * db).sum()
                assert abs(num - ana) <= 1e-5 * abs(num) + 1e-9, which


def test_warp_image_convention():
    img = torch.rand(2, 3, 10, 12)
    flow = torch.zeros(2, 2, 10, 12)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # out(p) = img(p + (2, -1))
    out = warp_image(img, flow)
    assert torch.allclose(out[..., 1:, :-2], img[..., :-1, 2:], atol=1e-6)


def test_flow_magnitude_loss():
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0], flow[:, 1] = 3.0, 4.0
    assert flow_magnitude_loss(flow).item() == pytest.approx(5.0, abs=1e-3)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2, :2] = 1.0
    assert flow_magnitude_loss(flow, mask).item() == pytest.approx(5.0, abs=1e-3)  # area-normalised
    flow[..., 4:, 4:] = 100.0
    assert flow_magnitude_loss(flow, mask).item() == pytest.approx(5.0, abs=1e-3)  # masked out
    zero = torch.zeros(1, 2, 4, 4, requires_grad=True)
    flow_magnitude_loss(zero).backward()
    assert torch.isfinite(zero.grad).all()
    assert flow_magnitude_loss(flow, torch.zeros(1, 1, 8, 8)).item() == 0.0


def test_flow_to_rgb_colour_wheel():
    flow = torch.zeros(1, 2, 1, 4)
    flow[0, :, 0, 1] = torch.tensor([2.0, 0.0])   # right
    flow[0, :, 0, 2] = torch.tensor([-2.0, 0.0])  # left
    flow[0, :, 0, 3] = torch.tensor([1.0, 0.0])   # right, half length
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (1, 1, 4, 3)
    assert torch.allclose(rgb[0, 0, 0], torch.ones(3))                        # zero: white
    assert torch.allclose(rgb[0, 0, 1], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(rgb[0, 0, 2], torch.tensor([0.0, 1.0, 1.0]), atol=1e-5)
    assert torch.allclose(rgb[0, 0, 3], torch.tensor([1.0, 0.5, 0.5]), atol=1e-5)
    fixed = flow_to_rgb(flow, max_magnitude=4.0)  # 2 px of 4: half saturation
    assert torch.allclose(fixed[0, 0, 1], torch.tensor([1.0, 0.5, 0.5]), atol=1e-5)


def test_config_validation():
    assert from_dict(FlowConfig, {"levels": 3, "window": 9}).window == 9
    with pytest.raises(MvfError, match="flow.method"):
        build_flow(FlowConfig(method="farneback"))
    with pytest.raises(MvfError, match="flow.window"):
        build_flow(FlowConfig(window=7))
    with pytest.raises(MvfError, match="flow.raft_weights"):
        build_flow(FlowConfig(method="raft"))


# --- RAFT (randomly initialised weights saved to a temp file; no real weights exist here) ---

@pytest.fixture(scope="module")
def raft_small_file(tmp_path_factory):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


def test_raft_loads_local_file_and_matches_torchvision(raft_small_file):
    est = build_flow(FlowConfig(method="raft", raft_weights=str(raft_small_file), raft_updates=1))
    est.train()
    net = est.raft.net
    params = list(est.parameters())
    assert params and not net.training and not any(p.requires_grad for p in params)
    img1, img2, _ = mapped_pair(64, torch.eye(2), (1.0, 0.0))
    img1, img2 = img1[..., :60, :], img2[..., :60, :]  # 60 x 64: padded to 128 x 128 inside
    a, b = img1.clone().requires_grad_(True), img2.clone().requires_grad_(True)
    flow = est(a, b)
    assert flow.shape == (1, 2, 60, 64)
    with torch.no_grad():  # reference: torchvision on [-1, 1] inputs, replicate-padded by hand
        pad = (32, 32, 34, 34)
        x1 = torch.nn.functional.pad(img1 * 2 - 1, pad, mode="replicate")
        x2 = torch.nn.functional.pad(img2 * 2 - 1, pad, mode="replicate")
        ref = net(x1, x2, num_flow_updates=1)[-1][..., 34:94, 32:96]
    assert torch.allclose(flow.detach(), ref, atol=1e-5)
    flow.abs().mean().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # differentiable, not no_grad


def test_raft_bad_weight_files(raft_small_file, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(MvfError, match="nope.pth: RAFT weights file not found"):
        build_flow(FlowConfig(method="raft", raft_weights=str(missing)))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MvfError, match="junk.pth: not a readable"):
        build_flow(FlowConfig(method="raft", raft_weights=str(junk)))
    with pytest.raises(MvfError, match="does not match torchvision raft_large"):
        build_flow(FlowConfig(method="raft", raft_weights=str(raft_small_file), raft_variant="large"))
    state = torch.load(raft_small_file, weights_only=True)
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    bad = tmp_path / "bad_shape.pth"
    torch.save(state, bad)
    with pytest.raises(MvfError, match="bad_shape.pth: .*shape of"):
        build_flow(FlowConfig(method="raft", raft_weights=str(bad)))
