"""`mvf reconstruct` end to end on synthetic triplets, and its error cases."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import smoke_args
from mvf.cli import main
from mvf.errors import MvfError
from mvf.face.model import FaceModel
from mvf.fileio import read_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mean_checkpoint(tiny_synth, tmp_path_factory):
    """A front-only mean-fusion model (2 steps): any number of views is allowed."""
    out = tmp_path_factory.mktemp("mean_run") / "run"
    assert main(smoke_args(tiny_synth, out, "--steps", "2", "--set", "model.fusion=mean",
                           "--set", "model.views=[front]")) == 0
    return out / "last.pt"


def test_reconstruct_end_to_end(tiny_synth, smoke_checkpoint, tmp_path):
    from mvf.io import load_mesh
    from mvf.face.params import load_params
    from mvf.net.checkpoint import load_model

    subject = tiny_synth / "000001"
    out = tmp_path / "rec"
    assert main(["reconstruct", "--checkpoint", str(smoke_checkpoint), "--images", str(subject),
                 "--out", str(out)]) == 0
    face = FaceModel.load()
    params = load_params(out / "params.json", face)
    assert set(params.pose) == {"front", "left", "right"} and params.id.shape == (100,)
    # the files agree with each other and with a direct forward pass of the network
    verts = params.decode(face).numpy()
    for name in ("mesh.obj", "mesh.ply"):
        mesh = load_mesh(out / name)
        assert mesh.vertices.shape == (face.n_verts, 3) and np.array_equal(mesh.faces, face.faces.numpy())
        assert np.allclose(mesh.vertices, verts, atol=1e-3)
    model = load_model(smoke_checkpoint)
    images = torch.stack([torch.from_numpy(read_image(subject / f"{v}.png")) for v in ("front", "left", "right")])
    with torch.no_grad():
        ref = model.net(images.permute(0, 3, 1, 2).float().div(255.0)[None])
    assert np.allclose(params.id, ref["id"][0].numpy(), atol=1e-5)
    assert np.allclose(params.poses(), ref["pose"][0].numpy(), atol=1e-4)
    # overlays: three input-sized panels, the first the input outside the mesh, changed where it is drawn
    for view in ("front", "left", "right"):
        over = read_image(out / f"overlay_{view}.png")
        src = read_image(subject / f"{view}.png")
        assert over.shape == (src.shape[0], 3 * src.shape[1], 3)
        changed = np.abs(over[:, :src.shape[1]].astype(int) - src.astype(int)).sum(-1) > 6
        assert 0.05 < changed.mean() < 0.95


def test_poses_follow_the_input_image_size(smoke_checkpoint, tiny_synth, tmp_path):
    """Inputs at twice the training size: the prediction is the same face, with f, tx, ty in
    the larger images' pixels (x2)."""
    import torch.nn.functional as tnf

    from mvf.fileio import write_image
    from mvf.recon.pipeline import predict_views
    from mvf.net.checkpoint import load_model
    from mvf.recon.views import framed_views

    model = load_model(smoke_checkpoint)
    subject = tiny_synth / "000002"
    small = {v: subject / f"{v}.png" for v in ("front", "left", "right")}
    big = {}
    for v, path in small.items():  # nearest-neighbour x2: shrinking back is exact
        img = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float()
        big[v] = tmp_path / f"{v}.png"
        write_image(big[v], tnf.interpolate(img, scale_factor=2, mode="nearest")[0].permute(1, 2, 0).byte().numpy())
    va, vb = framed_views(small), framed_views(big)
    a, b = predict_views(model, va.crops, va.names), predict_views(model, vb.crops, vb.names)
    assert torch.allclose(a["id"], b["id"], atol=0.05)
    assert torch.allclose(b["pose"][:, [0, 4, 5]], 2 * a["pose"][:, [0, 4, 5]], rtol=0.02, atol=0.3)
    assert torch.allclose(b["pose"][:, 1:4], a["pose"][:, 1:4], atol=0.02)


def test_single_front_view_with_mean_fusion(mean_checkpoint, tiny_synth, tmp_path):
    out = tmp_path / "front_only"
    assert main(["reconstruct", "--checkpoint", str(mean_checkpoint), "--front",
                 str(tiny_synth / "000003" / "front.png"), "--out", str(out)]) == 0
    params = json.loads((out / "params.json").read_text())
    assert list(params["pose"]) == ["front"]
    assert (out / "overlay_front.png").is_file() and not (out / "overlay_left.png").exists()
    # the same model also takes all three views
    out3 = tmp_path / "three"
    assert main(["reconstruct", "--checkpoint", str(mean_checkpoint), "--images",
                 str(tiny_synth / "000003"), "--out", str(out3)]) == 0
    assert list(json.loads((out3 / "params.json").read_text())["pose"]) == ["front", "left", "right"]


@pytest.fixture
def cli(capsys):
    """Run `mvf reconstruct ARGS` in-process; return (status, stderr)."""
    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        rc = main(["reconstruct", *args])
        return rc, capsys.readouterr().err

    return run


def _one_line(result, *needles):
    rc, err = result
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_concat_needs_all_three_views(cli, smoke_checkpoint, tiny_synth, tmp_path):
    subject = tiny_synth / "000001"
    _one_line(cli("--checkpoint", str(smoke_checkpoint), "--front", str(subject / "front.png"),
                   "--out", str(tmp_path / "o")), "concat", "got front")
    two = tmp_path / "two"
    two.mkdir()
    for v in ("front", "right"):
        (two / f"{v}.png").write_bytes((subject / f"{v}.png").read_bytes())
    _one_line(cli("--checkpoint", str(smoke_checkpoint), "--images", str(two), "--out", str(tmp_path / "o")),
              "concat", "got front, right")


def test_input_errors(cli, smoke_checkpoint, tiny_synth, tmp_path):
    from mvf.recon.views import framed_views, gather_views

    subject = tiny_synth / "000001"
    _one_line(cli("--checkpoint", str(smoke_checkpoint), "--out", str(tmp_path / "o")), "no input images")
    _one_line(cli("--checkpoint", str(smoke_checkpoint), "--front", str(tmp_path / "nope.png"),
                   "--left", str(subject / "left.png"), "--right", str(subject / "right.png"),
                   "--out", str(tmp_path / "o")), "nope.png", "not found")
    with pytest.raises(MvfError, match="not both"):
        gather_views(front="a.png", images_dir=str(subject))
    from mvf.fileio import write_image

    write_image(tmp_path / "wide.png", np.zeros((64, 80, 3), np.uint8))
    with pytest.raises(MvfError, match="wide.png.*square"):
        framed_views({"front": tmp_path / "wide.png"})


def test_checkpoint_errors(cli, smoke_checkpoint, tiny_synth, tmp_path):
    from mvf.train.checkpoint import save_checkpoint

    subject = str(tiny_synth / "000001")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(smoke_checkpoint.read_bytes()[:5000])  # truncated
    _one_line(cli("--checkpoint", str(corrupt), "--images", subject, "--out", str(tmp_path / "o")),
              "corrupt.pt", "corrupt")
    _one_line(cli("--checkpoint", str(tmp_path / "none.pt"), "--images", subject, "--out", str(tmp_path / "o")),
              "none.pt", "not found")
    # a checkpoint whose weights don't fit the network its config describes
    ckpt = torch.load(smoke_checkpoint, weights_only=True)
    ckpt["config"]["model"]["hidden"] = 64
    mismatched = tmp_path / "mismatched.pt"
    save_checkpoint(mismatched, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    _one_line(cli("--checkpoint", str(mismatched), "--images", subject, "--out", str(tmp_path / "o")),
              "mismatched.pt", "does not match the network")
    # not an mvf checkpoint at all
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    _one_line(cli("--checkpoint", str(foreign), "--images", subject, "--out", str(tmp_path / "o")),
              "not an mvf checkpoint")


def test_overlay_draws_the_mesh_where_the_pose_puts_it(tiny_synth):
    """With the ground-truth face and pose the overlay's mesh panel matches the face mask."""
    from mvf.data import SynthDataset
    from mvf.face.mesh import vertex_normals
    from renderer.pictures import overlay_sheet

    face = FaceModel.load()
    sample = SynthDataset(tiny_synth)[0]
    verts = face.decode(sample["id"][None], sample["exp"][None])[0]
    img = sample["images"][1].permute(1, 2, 0).numpy()
    out = overlay_sheet(img, verts, face.faces, vertex_normals(verts, face.faces), sample["pose"][1],
                        torch.ones(face.n_verts))
    w = img.shape[1]
    changed = np.abs(out[:, :w] - img).sum(-1) > 6 / 255
    mask = sample["masks"][1].numpy() > 0.5
    iou = (changed & mask).sum() / (changed | mask).sum()
    assert iou > 0.85, iou



def test_threads_follow_the_idle_cores(monkeypatch):
    """`mvf reconstruct`'s default threads: /proc/stat readings 100 ticks apart on a 2-CPU machine
    with both idle give 2 idle cores and 2 threads; with one core busy (user time) 1 and 1 thread."""
    from mvf.commands import reconstruct as rc

    def stat(user: int, idle: int) -> str:
        return (f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"
                f"cpu1 0 0 0 0 0 0 0 0 0 0\nintr 1 2\n")

    assert rc.idle_cores(stat(10, 500), stat(10, 700)) == pytest.approx(2.0)
    assert rc.idle_cores(stat(10, 500), stat(110, 600)) == pytest.approx(1.0)
    readings = iter([stat(10, 500), stat(110, 600)])

    class FakeStat:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return next(readings)

    monkeypatch.setattr(rc.os, "cpu_count", lambda: 2)
    monkeypatch.setattr("builtins.open", lambda *a, **k: FakeStat())
    assert rc.default_threads(sample_s=0.0) == 1
    readings = iter([stat(10, 500), stat(10, 700)])
    assert rc.default_threads(sample_s=0.0) == 2


def test_side_views_turned_past_the_calibrated_range_are_warned_about():
    """A side view whose final yaw is past WIDE_SIDE_YAW_DEG gets one warning naming its file
    and yaw; side views inside the range and the front view (whatever its yaw) get none."""
    from types import SimpleNamespace
    from pathlib import Path

    from mvf.recon.pipeline import WIDE_SIDE_YAW_DEG, Reconstruction

    def warned(yaws_deg: dict[str, float]) -> list[str]:
        names = tuple(yaws_deg)
        poses = torch.zeros(len(names), 6)
        poses[:, 2] = torch.deg2rad(torch.tensor(list(yaws_deg.values())))
        views = SimpleNamespace(names=names, paths=[Path(f"/photos/{n}.jpg") for n in names])
        rec = Reconstruction(views, None, None, None, poses, None, None, None)
        return rec.wide_view_warnings()

    assert warned({"front": 0.0, "left": -45.0, "right": 50.0}) == []
    assert warned({"front": 70.0, "left": -WIDE_SIDE_YAW_DEG + 0.5, "right": WIDE_SIDE_YAW_DEG - 0.5}) == []
    lines = warned({"front": 2.0, "left": -59.6, "right": 40.0})
    assert len(lines) == 1 and lines[0].startswith("/photos/left.jpg: yaw -60 deg")
    lines = warned({"front": 2.0, "left": -30.0, "right": 61.0})
    assert len(lines) == 1 and lines[0].startswith("/photos/right.jpg: yaw +61 deg") and "\n" not in lines[0]
