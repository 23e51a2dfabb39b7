"""The ``self_supervised`` training stage (`mvf.train.selfsup_stage`): its terms at and away from
the ground truth, gradients reaching the backbone through the warp and the flow, an end-to-end
smoke run (configs/selfsup_smoke.yaml) that resumes exactly and writes picture sheets, and
one-line config errors. Runs on the session's tiny synthetic set (tests/conftest.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from conftest import ROOT
from mvf.cli import main
from mvf.errors import MvfError
from mvf.train.logs import read_csv

CONFIG = ROOT / "configs" / "selfsup_smoke.yaml"


def selfsup_args(data, out, *extra: str) -> list[str]:
    """`mvf train` arguments of configs/selfsup_smoke.yaml on ``data``: 2 supervised steps, then
    4 self-supervised ones, logging every step, no TensorBoard unless overridden."""
    return ["train", "--config", str(CONFIG), "--out", str(out), "--quiet",
            "--set", f"validation.root={data}", "--set", f"stages.0.data.root={data}",
            "--set", f"stages.1.data.root={data}", "--set", "stages.0.steps=2", "--set", "stages.1.steps=4",
            "--set", "log_every=1", "--set", "checkpoint_every=100", "--set", "tensorboard=false", *extra]


@pytest.fixture(scope="module")
def setup():
    """(config, face model, network, loss context) of configs/selfsup_smoke.yaml on the CPU."""
    from mvf.face.model import FaceModel
    from mvf.net.network import build_network
    from mvf.train.config import load_train_config
    from mvf.train.loop import build_context

    cfg = load_train_config(CONFIG)
    face = FaceModel.load()
    net = build_network(cfg.model, face)
    return cfg, face, net, build_context(cfg, torch.device("cpu"), net, face)


def _labelled_batch(root, n: int = 4) -> dict:
    from mvf.data import SynthDataset

    ds = SynthDataset(root, size=64)
    return default_collate([ds[i] for i in range(n)])


def test_terms_near_zero_at_ground_truth_and_grow_when_perturbed(tiny_synth, setup):
    """Ground-truth shape and poses: photometric error and residual flow are small and the given
    landmarks are hit; a 3.4 degree yaw or a 1.5 px shift of the side views raises all three."""
    from mvf.train.config import LossWeights
    from mvf.train.selfsup_stage import selfsup_terms

    cfg, _, _, ctx = setup
    batch = _labelled_batch(tiny_synth)
    weights = LossWeights(photometric=1.0, flow=1.0, landmark=1.0, prior=1.0)
    out = {"id": batch["id"], "exp": batch["exp"], "pose": batch["pose"]}
    gt, res = selfsup_terms(ctx, out, batch, weights, cfg.stages[1], cfg.model.views)
    assert set(gt) == {"photometric", "flow", "landmark", "prior"}
    assert len(res.pairs) == 6 and res.flow_field.shape == (4, 6, 2, 64, 64)
    assert gt["photometric"] < 0.01 and gt["flow"] < 0.3 and gt["landmark"] < 0.01
    for delta in ([0.0, 0.0, 0.06, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.5, 0.0]):
        pose = batch["pose"].clone()
        pose[:, 1:] += torch.tensor(delta)  # the side views move relative to the front
        bad, _ = selfsup_terms(ctx, {**out, "pose": pose}, batch, weights, cfg.stages[1], cfg.model.views)
        assert bad["photometric"] > 2.5 * gt["photometric"], (delta, bad, gt)
        assert bad["flow"] > 4.0 * gt["flow"], (delta, bad, gt)
        assert bad["landmark"] > 0.5, (delta, bad)
        assert bad["prior"] == gt["prior"]


def test_gradients_reach_the_backbone_through_warp_and_flow(tiny_synth, smoke_checkpoint, setup):
    """From a trained checkpoint (the heads' last layers start at zero, which would block every
    gradient), the photometric-only and the flow-only losses both give the backbone's first
    convolution a finite, non-zero gradient; the network sees no labels, only images."""
    from mvf.data import UnlabelledTriplets
    from mvf.train.config import LossWeights
    from mvf.train.selfsup_stage import selfsup_loss

    cfg, _, net, ctx = setup
    net.load_state_dict(torch.load(smoke_checkpoint, weights_only=True)["model"])
    ds = UnlabelledTriplets(tiny_synth, size=64)
    batch = default_collate([ds[i] for i in range(2)])
    first = next(net.encoder.backbone.parameters())
    grads = {}
    for name, weights in (("photometric", LossWeights(photometric=1.0)), ("flow", LossWeights(flow=1.0))):
        net.zero_grad(set_to_none=True)
        total, terms = selfsup_loss(ctx, net, batch, weights, cfg.stages[1])
        assert name in terms and total.requires_grad
        assert torch.equal(total, terms[name])
        total.backward()
        g = first.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
        grads[name] = g.clone()
    # two different losses, two different gradients (the flow term is not the photometric one)
    cos = torch.nn.functional.cosine_similarity(grads["photometric"].flatten(), grads["flow"].flatten(), 0)
    assert cos < 0.999


def test_photo_size_scales_poses_exactly_and_front_pairs(setup):
    from renderer.camera import project
    from mvf.train.selfsup_stage import at_photo_size, view_pairs

    _, face, _, _ = setup
    verts = face.mean[None, :50]
    poses = torch.tensor([[[0.3, 0.1, -0.5, 0.05, 30.0, 35.0], [0.32, 0.0, 0.6, -0.1, 33.0, 31.0]]])
    images = torch.rand(1, 2, 3, 64, 64)
    small, scaled = at_photo_size(images, poses, 48)
    assert small.shape == (1, 2, 3, 48, 48)
    torch.testing.assert_close(project(verts[:, None], scaled), project(verts[:, None], poses) * 0.75)
    same, same_poses = at_photo_size(images, poses, None)
    assert same is images and same_poses is poses
    assert view_pairs(("front", "left", "right"), "front") == [(0, 1), (1, 0), (0, 2), (2, 0)]
    assert len(view_pairs(("front", "left", "right"), "all")) == 6


def test_smoke_stage_runs_end_to_end_and_resumes_exactly(tiny_synth, tmp_path):
    """6 steps straight (2 supervised + 4 self-supervised) == 3 steps, stop inside the
    self-supervised stage, --resume, 3 more: the same losses, weights, Adam state and picture
    sheets. The run logs the self-supervised terms and writes sheets to disk and TensorBoard."""
    extra = ["--set", "validation.every_steps=3", "--set", "pictures_every=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(selfsup_args(tiny_synth, straight, "--steps", "6", *extra, "--set", "tensorboard=true")) == 0
    assert main(selfsup_args(tiny_synth, split, "--steps", "3", *extra)) == 0
    assert main(selfsup_args(tiny_synth, split, "--steps", "6", "--resume", *extra)) == 0

    rows = read_csv(straight / "train.csv")
    assert [r["stage"] for r in rows] == ["supervised"] * 2 + ["self_supervised"] * 4
    for r in rows[2:]:
        assert r["vertex"] == "" and r["pose"] == ""  # no labels used
        for k in ("photometric", "flow", "landmark", "prior"):
            assert np.isfinite(float(r[k])), (k, r)
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_csv(split / "train.csv")]  # bit-identical

    ca = torch.load(straight / "last.pt", weights_only=True)
    cb = torch.load(split / "last.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 6
    assert ca["position"]["stage"] == cb["position"]["stage"] == 1 and cb["position"]["stage_step"] == 4
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    assert ca["optimizer_stage"] == cb["optimizer_stage"] == 1
    for pid, state in ca["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], cb["optimizer"]["state"][pid]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], cb["optimizer"]["state"][pid]["exp_avg_sq"])

    for view in ("front", "left", "right"):
        a = (straight / "pictures" / f"step_000006_{view}.png").read_bytes()
        assert (straight / "pictures" / f"step_000003_{view}.png").is_file()
        assert a == (split / "pictures" / f"step_000006_{view}.png").read_bytes()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "pictures/left" in events.Tags()["images"]
    assert [e.step for e in events.Images("pictures/left")] == [3, 6]


@pytest.mark.parametrize("override,needle", [
    ("stages.1.loss.vertex=1.0", "stages.1.loss.vertex"),
    ("stages.1.flow.method=farneback", "stages.1.flow.method"),
    ("stages.1.photo_pairs=some", "stages.1.photo_pairs"),
    ("stages.1.data.augment={}", "takes no augmentation"),
    ("stages.1.loss={photometric: 0, flow: 0, landmark: 0, prior: 0}", "every weight is 0"),
])
def test_bad_stage_config_is_one_line_error(tiny_synth, tmp_path, capsys, override, needle):
    assert main(selfsup_args(tiny_synth, tmp_path / "run", "--steps", "1", "--set", override)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_missing_unlabelled_folder(tiny_synth, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(selfsup_args(tiny_synth, tmp_path / "run", "--set", f"stages.1.data.root={missing}")) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1


def test_stage_kind_is_registered():
    from mvf.train.stages import STAGE_KINDS

    kind = STAGE_KINDS["self_supervised"]
    assert kind.loss_terms == ("photometric", "flow", "landmark", "prior")
    with pytest.raises(MvfError, match="at least two views"):
        from mvf.train.config import ModelConfig, StageConfig, LossWeights
        from mvf.train.stages import DataRequest

        stage = StageConfig(kind="self_supervised", loss=LossWeights(photometric=1.0))
        kind.make_dataset(DataRequest(stage, ModelConfig(views=["front"], fusion="mean"), {}))


def test_visualize_adds_mask_error_and_flow_panels(tmp_path):
    """`mvf visualize` appends, per view and pair, the loss mask, the error map and the flow field:
    4 + 2 + 2 renderer panels and 3 x 2 cross-view ones = 4 rows of 4; without flow, 3 rows."""
    from mvf.fileio import read_image
    from renderer.pictures import GAP_PX, TITLE_PX

    size = 48
    for extra, rows in (([], 4), (["--no-flow"], 3)):
        out = tmp_path / f"vis{rows}"
        assert main(["visualize", "--random", "--seed", "4", "--size", str(size), "--out", str(out), *extra]) == 0
        sheet = read_image(out / "sheet_left.png")
        assert sheet.shape[:2] == (rows * (size + TITLE_PX) + (rows - 1) * GAP_PX, 4 * (size + GAP_PX) - GAP_PX)
