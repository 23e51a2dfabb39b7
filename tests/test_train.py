"""`mvf train`: the smoke config learns, checkpoints resume exactly, and bad input gives one-line
errors. Runs on the session's tiny synthetic set (tests/conftest.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.utils.tensorboard as tb

import mvf.train.loop
from conftest import ROOT, smoke_args
from mvf.cli import main
from mvf.train.logs import RunLogger, read_csv


def _losses(run) -> list[float]:
    return [float(r["loss"]) for r in read_csv(run / "train.csv")]


def test_labels_give_zero_loss_at_the_ground_truth(tiny_synth):
    """The supervised terms vanish when the 'prediction' is the stored ground truth, also when
    the dataset resizes the images (pose and landmarks scaled with them)."""
    from mvf.data import SynthDataset
    from mvf.face.model import FaceModel
    from mvf.face.landmarks import LandmarkProjector
    from mvf.losses.supervised import face_region
    from mvf.net.network import PoseNorm
    from mvf.net.config import ModelConfig
    from mvf.train.stages import LossContext, supervised_terms

    face = FaceModel.load()
    for size in (64, 48):
        ds = SynthDataset(tiny_synth, size=size)
        batch = {k: (torch.stack([ds[i][k] for i in range(3)]) if k != "subject" else None)
                 for k in ("images", "id", "exp", "pose", "landmarks", "landmark_visible")}
        ctx = LossContext(face, LandmarkProjector(face), PoseNorm.for_landmarks(size, face.landmarks_3d(face.mean[None])[0]),
                          face_region(face, 95.0), ModelConfig(image_size=size), torch.device("cpu"))
        out = {"id": batch["id"], "exp": batch["exp"], "pose": batch["pose"]}
        terms = supervised_terms(ctx, out, batch)
        assert terms["landmark"].item() < 0.01  # px
        assert terms["pose"].item() == 0 and terms["params"].item() == 0
        assert terms["vertex"].item() < 1e-4


def test_smoke_training_lowers_the_loss(tiny_synth, tmp_path):
    run = tmp_path / "run"
    assert main(smoke_args(tiny_synth, run, "--steps", "30")) == 0
    losses = _losses(run)
    assert len(losses) == 15  # log_every 2
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:3]), losses
    for name in ("last.pt", "best.pt", "step-0000030.pt", "config.yaml", "val.csv"):
        assert (run / name).is_file(), name
    val = read_csv(run / "val.csv")
    assert [int(r["step"]) for r in val] == [20, 30] and float(val[-1]["rmse_mm"]) > 0


def test_resume_is_exact(tiny_synth, tmp_path, monkeypatch):
    """N steps straight == N/2 steps, stop, --resume, N/2 more: same losses, same weights and
    optimiser state (with augmentation on, so its random draws must replay too); TensorBoard
    purges the events after the resumed step."""
    purges = []

    class Logger(RunLogger):
        def __init__(self, *args, purge_step=None, **kwargs):
            purges.append(purge_step)
            super().__init__(*args, purge_step=purge_step, **kwargs)

    monkeypatch.setattr(mvf.train.loop, "RunLogger", Logger)
    extra = ["--set", "log_every=1", "--set", "checkpoint_every=100", "--set", "validation.every_steps=4",
             "--set", "stages.0.data.augment={}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(smoke_args(tiny_synth, straight, "--steps", "6", *extra)) == 0
    assert main(smoke_args(tiny_synth, split, "--steps", "3", *extra)) == 0
    assert main(smoke_args(tiny_synth, split, "--steps", "6", "--resume", *extra)) == 0
    a, b = _losses(straight), _losses(split)
    assert len(a) == 6 and a == b  # bit-identical
    assert purges == [None, None, 4]  # straight, split, resumed after step 3
    ca = torch.load(straight / "last.pt", weights_only=True)
    cb = torch.load(split / "last.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 6
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    for pid, state in ca["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], cb["optimizer"]["state"][pid]["exp_avg_sq"])
    val_a = read_csv(straight / "val.csv")
    val_b = [r for r in read_csv(split / "val.csv") if r["step"] != "3"]  # + the stop's own validation
    assert [r["step"] for r in val_a] == ["4", "6"] and val_a == val_b


@pytest.fixture
def run_cli(capsys):
    """Run `mvf ARGS` in-process (as the console script does); return (status, stderr)."""
    def run(args: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        rc = main(args)
        return rc, capsys.readouterr().err

    return run


def _one_line_error(result: tuple[int, str], *needles: str) -> None:
    rc, err = result
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_data_folder(run_cli, tmp_path):
    missing = tmp_path / "nowhere"
    _one_line_error(run_cli(smoke_args(missing, tmp_path / "run")), str(missing), "not found")


def test_cli_entry_point_prints_one_line(tmp_path):
    """The real console entry (a subprocess): exit status 2 and one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "mvf", *smoke_args(tmp_path / "nowhere", tmp_path / "run")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_errors(run_cli, tiny_synth, smoke_checkpoint, tmp_path):
    run = smoke_checkpoint.parent
    # an existing run is not overwritten without --resume
    _one_line_error(run_cli(smoke_args(tiny_synth, run)), "already holds a run")
    # nothing to resume
    _one_line_error(run_cli(smoke_args(tiny_synth, tmp_path / "empty", "--resume")), "last.pt", "not found")
    # a different network
    _one_line_error(run_cli(smoke_args(tiny_synth, run, "--resume", "--set", "model.hidden=64")),
                    "model differs", "model.hidden")
    # a corrupt checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "last.pt").write_bytes(b"\x00garbage" * 100)
    _one_line_error(run_cli(smoke_args(tiny_synth, bad, "--resume")), "corrupt")


def test_cached_samples_match_the_dataset(tiny_synth):
    """The in-memory cache (data.cache) serves the same samples and augmentation draws as
    `SynthDataset` (images to within uint8 rounding)."""
    from mvf.data import AugmentConfig, SynthDataset
    from mvf.train.stages import CachedSamples

    aug = AugmentConfig()
    ref = SynthDataset(tiny_synth, augment=aug, size=48, seed=5)
    cached = CachedSamples(SynthDataset(tiny_synth, augment=None, size=48, seed=5), aug, 5)
    for epoch in (0, 1):
        ref.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in (0, 3, 0):  # the second read of 0 comes from the cache
            a, b = ref[i], cached[i]
            for key in ("pose", "landmarks", "landmark_visible", "id", "exp"):
                assert torch.allclose(a[key], b[key], atol=1e-5), key
            assert (a["images"] - b["images"]).abs().max() < 4 / 255
            assert (a["masks"] != b["masks"]).float().mean() < 0.01
    assert len(cached._cache) == 2


def test_geometry_stage_frames_views_like_the_renders(tiny_synth):
    """`frame_views` rebuilds a synthetic subject's stored poses and landmarks from its face,
    view angles and framing (fill, shift read back from the stored landmark box)."""
    from mvf.data import SynthDataset
    from mvf.face.model import FaceModel
    from mvf.face.landmarks import LandmarkProjector
    from mvf.train.geometry_stage import frame_views

    face = FaceModel.load()
    ds = SynthDataset(tiny_synth)
    size = int(ds.index["size"])
    batch = [ds[i] for i in range(3)]
    pose = torch.stack([s["pose"] for s in batch])
    lm = torch.stack([s["landmarks"] for s in batch])
    lo, hi = lm.min(2).values, lm.max(2).values
    fill = (hi - lo).max(-1).values / size
    shift = (lo + hi) / (2 * size) - 0.5
    verts = face.decode(torch.stack([s["id"] for s in batch]), torch.stack([s["exp"] for s in batch]))
    poses, landmarks = frame_views(LandmarkProjector(face), verts, pose[..., 1:4], fill, shift, size)
    assert torch.allclose(poses, pose, atol=1e-3)
    assert torch.allclose(landmarks, lm, atol=1e-2)


def test_geometry_stage_learns_shape_from_landmarks(tiny_synth, tmp_path):
    """A short geometry stage (sampled faces, no images) lowers the vertex error on held-out
    real renders' labels below the mean face's, through the landmark branch alone."""
    from mvf.data import SynthDataset
    from mvf.net.checkpoint import load_model
    from mvf.align import aligned_rmse
    from mvf.losses.supervised import face_region

    run = tmp_path / "geo"
    args = smoke_args(tiny_synth, run, "--set", "stages.0.steps=200", "--set", "model.hidden=512",
                      "--set", "model.landmark_head=true",
                      "--set", "stages.0.kind=geometry", "--set", "stages.0.batch_size=64",
                      "--set", "stages.0.loss={vertex: 1.0, pose: 1.0}", "--set", "stages.0.landmark_noise_px=0.0")
    assert main(args) == 0
    model = load_model(run / "last.pt")
    ds = SynthDataset(tiny_synth)
    lm = torch.stack([ds[i]["landmarks"] for i in range(len(ds))])
    gt = model.face.decode(torch.stack([ds[i]["id"] for i in range(len(ds))]),
                           torch.stack([ds[i]["exp"] for i in range(len(ds))]))
    with torch.no_grad():
        out = model.net(None, landmarks=lm)
    region = face_region(model.face, 95.0)
    pred = aligned_rmse(model.face.decode(out["id"], out["exp"]), gt, region).mean()
    mean = aligned_rmse(model.face.mean[None].expand_as(gt), gt, region).mean()
    assert pred < 0.9 * mean, (pred, mean)


def test_frozen_parameters_never_move(tiny_synth, tmp_path):
    """``freeze`` prefixes: those parameters keep their values while the rest trains."""
    from mvf.net.checkpoint import load_model
    from mvf.train.checkpoint import load_checkpoint

    run = tmp_path / "frozen"
    args = smoke_args(tiny_synth, run, "--set", "stages.0.steps=4", "--set", "checkpoint_every=2",
                      "--set", "keep_checkpoints=5", "--set", "model.landmark_head=true",
                      "--set", "stages.0.loss.landmark2d=0.1", "--set", "stages.0.freeze=[geometry, geo_]")
    assert main(args) == 0
    before = load_checkpoint(run / "step-0000002.pt")["model"]
    after = load_model(run / "last.pt").net.state_dict()
    frozen = [k for k in before if k.startswith(("geometry", "geo_"))]
    moving = [k for k in before if k.startswith("encoder.landmark_head") and before[k].is_floating_point()]
    assert frozen and moving
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in moving)


def test_freezing_everything_is_refused(tiny_synth, tmp_path, capsys):
    args = smoke_args(tiny_synth, tmp_path / "all", "--set", "stages.0.freeze=[encoder, fusion, head_]")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "leaves no parameter to train" in err and "\n" not in err


def test_geometry_stage_needs_the_landmark_head(tiny_synth, tmp_path, capsys):
    args = smoke_args(tiny_synth, tmp_path / "nohead", "--set", "stages.0.kind=geometry",
                      "--set", "stages.0.loss={vertex: 1.0}")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "needs model.landmark_head: true" in err and "\n" not in err


def test_resumed_tensorboard_purges_later_events(tmp_path, monkeypatch):
    """On resume the SummaryWriter gets purge_step = resumed step + 1 (no stale events)."""
    seen = {}

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            seen["purge_step"] = purge_step

    monkeypatch.setattr(tb, "SummaryWriter", Writer)
    RunLogger(tmp_path, ["step"], ["step"], tensorboard=True, purge_step=7)
    assert seen["purge_step"] == 7
    RunLogger(tmp_path, ["step"], ["step"], tensorboard=True)
    assert seen["purge_step"] is None
