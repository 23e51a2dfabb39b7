"""Bad input on the inference side (issue 15): every case ends with one line naming the file and
the problem, exit 2 (or exit 0 with a one-line warning), no traceback and no partial output.

Real code paths throughout: the CLI in-process (`mvf.cli.main`) or as ``python -m mvf``, the
session's smoke checkpoint (conftest) and the shared real triplet.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from mvf.cli import main
from mvf.errors import MvfError
from mvf.face.params import ID_BOUND
from mvf.fileio import read_image, write_image, write_json
from mvf.recon.views import FRAMED_MAX_SIDE, same_view_warnings

pytestmark = pytest.mark.usefixtures("one_thread")

TRIPLET = ROOT.parent / "shared" / "samples" / "triplet-1"
needs_triplet = pytest.mark.skipif(not TRIPLET.is_dir(), reason="../shared/samples/triplet-1 missing")


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run ``mvf argv`` in-process: exit 2, one stderr line holding every needle; returns it."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ----------------------------------------------------------------------------- 1. output paths
def _bad_outputs(tmp_path: Path, kind: str, suffix: str) -> list[tuple[str, str]]:
    """(--out value, text the error must name) for an output folder ("dir") or file ("file")."""
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("keep me")
    folder = tmp_path / f"a_folder{suffix}"
    folder.mkdir()
    name = f"x{suffix}"
    return [
        (str(blocker if kind == "dir" else folder), str(blocker if kind == "dir" else folder)),
        (str(blocker / name), str(blocker)),
        (f"/sys/{name}", "/sys"),
        (f"/proc/x/{name}", "/proc/x"),
    ]


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("meshes")
    for seed in (0, 1):
        assert main(["export", "--random", "--seed", str(seed), "--out", str(out / f"{seed}.ply")]) == 0
    return out / "0.ply", out / "1.ply"


OUTPUT_CASES = {  # command: (output kind, suffix, argv before --out / the output option)
    "export": ("file", ".obj", lambda c, s, m: ["export", "--random", "--out"]),
    "visualize": ("dir", "", lambda c, s, m: ["visualize", "--random", "--size", "32", "--no-flow", "--out"]),
    "reconstruct": ("dir", "", lambda c, s, m: ["reconstruct", "--checkpoint", str(c), "--images", str(s), "--out"]),
    "fit": ("dir", "", lambda c, s, m: ["fit", "--images", str(s), "--out"]),
    "evaluate-json": ("file", ".json", lambda c, s, m: ["evaluate", "--pred", str(m[0]), "--gt", str(m[1]), "--json"]),
    "evaluate-aligned": ("file", ".ply", lambda c, s, m: ["evaluate", "--pred", str(m[0]), "--gt", str(m[1]),
                                                          "--aligned-out"]),
}


@pytest.mark.parametrize("command", list(OUTPUT_CASES))
def test_unusable_outputs_are_refused_before_the_work(command, tmp_path, capsys, tiny_synth, smoke_checkpoint,
                                                      meshes):
    """--out an existing file (folder for file outputs), under a file, in /sys or /proc: one line."""
    kind, suffix, argv = OUTPUT_CASES[command]
    for out, named in _bad_outputs(tmp_path, kind, suffix):
        refused(capsys, [*argv(smoke_checkpoint, tiny_synth / "000000", meshes), out], named)
    assert (tmp_path / "blocker.txt").read_text() == "keep me"
    assert files_under(tmp_path / f"a_folder{suffix}") == []


# ----------------------------------------------------------------------------- 6. devices
@pytest.mark.parametrize("device,needle", [("cuda:7", "cuda:7"), ("tpu9", "not a torch device")])
def test_unavailable_device_is_one_line(device, needle, tmp_path, capsys, smoke_checkpoint, tiny_synth):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "rec"
    refused(capsys, ["reconstruct", "--checkpoint", str(smoke_checkpoint), "--images",
                     str(tiny_synth / "000000"), "--device", device, "--out", str(out)], "--device", needle)
    assert not out.exists()


@pytest.mark.parametrize("device", ["cuda:7", "tpu9"])
def test_unavailable_device_for_synth(device, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "synth"
    refused(capsys, ["synth", "--out", str(out), "--subjects", "1", "--device", device], f"--device {device}")
    assert files_under(out) == []


# ----------------------------------------------------------------------------- 3. finite values
@pytest.mark.parametrize("ids,needle", [("[NaN, 0.0]", "NaN"), ("[0.0, Infinity]", "NaN or infinite"),
                                        ("[1e6]", f"|id| <= {ID_BOUND:g}"), ("[0.0, -10.5]", "beyond the bound")])
def test_export_refuses_non_finite_or_absurd_params(ids, needle, tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text(f'{{"id": {ids}, "exp": [0.0]}}')
    out = tmp_path / "out" / "x.obj"
    refused(capsys, ["export", "--params", str(p), "--out", str(out)], str(p), "'id'", needle)
    assert files_under(tmp_path / "out") == []


def test_params_at_the_bound_are_accepted(tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"id": [ID_BOUND, -ID_BOUND], "exp": [1.0]}))
    assert main(["export", "--params", str(p), "--out", str(tmp_path / "x.ply")]) == 0


def test_visualize_refuses_nan_params(tmp_path, capsys, tiny_synth):
    p = tmp_path / "p.json"
    pose = [0.3, 0.0, 0.0, 0.0, 32.0, 32.0]
    p.write_text(json.dumps({"id": [0.0], "exp": [0.0], "pose": {"front": pose, "left": pose,
                                                                  "right": [0.3, 0.0, float("nan"), 0, 32, 32]}}))
    out = tmp_path / "vis"
    refused(capsys, ["visualize", "--params", str(p), "--images", str(tiny_synth / "000000"), "--no-flow",
                     "--out", str(out)], str(p), "'pose.right'", "NaN")
    assert files_under(out) == []


def test_json_writer_never_writes_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"a": float("nan")})
    assert files_under(tmp_path) == []


def _altered_checkpoint(src: Path, dst: Path, change) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    change(ckpt["model"])
    torch.save(ckpt, dst)
    return dst


def test_nan_checkpoint_is_refused_without_outputs(smoke_checkpoint, tiny_synth, tmp_path, capsys):
    def poison(state):
        key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[key].view(-1)[0] = float("nan")

    bad = _altered_checkpoint(smoke_checkpoint, tmp_path / "nan.pt", poison)
    out = tmp_path / "rec"
    refused(capsys, ["reconstruct", "--checkpoint", str(bad), "--images", str(tiny_synth / "000000"),
                     "--out", str(out)], str(bad), "NaN")
    assert files_under(out) == []


def test_absurd_network_output_is_refused(smoke_checkpoint, tiny_synth, tmp_path, capsys):
    """Finite weights whose prediction is far outside the prior: refused naming the checkpoint."""
    def inflate(state):  # the coefficient head's output bias: (n_id + n_exp,), identity first
        key = [k for k in state if k.startswith("head_3dmm") and k.endswith("bias")][-1]
        state[key][:100] += 1e4

    bad = _altered_checkpoint(smoke_checkpoint, tmp_path / "big.pt", inflate)
    out = tmp_path / "rec"
    refused(capsys, ["reconstruct", "--checkpoint", str(bad), "--images", str(tiny_synth / "000000"),
                     "--out", str(out)], str(bad), "network output", "'id'")
    assert files_under(out) == []


def test_degenerate_fit_is_refused(tiny_synth, tmp_path):
    """Landmarks all at one point (what a broken detector could hand over) fit a zero-scale pose:
    refused by the same check as params files, before anything is written."""
    from mvf.recon.fit import FitConfig
    from mvf.recon.pipeline import reconstruct
    from mvf.recon.views import detect_views

    subject = tiny_synth / "000000"
    labels = np.load(subject / "labels.npz")
    files = {}
    for i, v in enumerate(("front", "left", "right")):
        files[v] = tmp_path / f"{v}.npy"
        np.save(files[v], labels["landmarks"][i])
    views = detect_views({v: subject / f"{v}.png" for v in files}, 64, files, crop=False)
    views.landmarks[:] = 10.0
    with pytest.raises(MvfError, match=r"fitted face.*'pose.front' scale f = 0 must be positive"):
        reconstruct(views, None, FitConfig(landmark_steps=3))


def test_degenerate_landmark_file(tmp_path, capsys, tiny_synth):
    lm = tmp_path / "front.npy"
    np.save(lm, np.full((68, 2), 20.0))
    refused(capsys, ["fit", "--images", str(tiny_synth / "000000"), "--front-landmarks", str(lm),
                     "--out", str(tmp_path / "o")], str(lm), "degenerate")


# ----------------------------------------------------------------------------- 4. nonsense input
def test_negative_refine_steps(smoke_checkpoint, tiny_synth, tmp_path, capsys):
    refused(capsys, ["reconstruct", "--checkpoint", str(smoke_checkpoint), "--images", str(tiny_synth / "000000"),
                     "--refine-steps", "-1", "--out", str(tmp_path / "rec")], "--refine-steps -1")


def test_camera_distance_out_of_range_or_without_a_fit(smoke_checkpoint, tiny_synth, tmp_path, capsys):
    images = str(tiny_synth / "000000")
    refused(capsys, ["reconstruct", "--images", images, "--camera-distance", "50", "--out", str(tmp_path / "a")],
            "--camera-distance 50", "[200, 100000]")
    refused(capsys, ["reconstruct", "--checkpoint", str(smoke_checkpoint), "--images", images,
                     "--camera-distance", "1000", "--out", str(tmp_path / "b")], "--camera-distance 1000", "--refine-steps")


@pytest.mark.parametrize("side", [1, 31])
def test_tiny_front_image(side, smoke_checkpoint, tiny_synth, tmp_path, capsys):
    front = tmp_path / "front.png"
    write_image(front, np.full((side, side, 3), 128, np.uint8))
    subject = tiny_synth / "000000"
    refused(capsys, ["reconstruct", "--checkpoint", str(smoke_checkpoint), "--front", str(front),
                     "--left", str(subject / "left.png"), "--right", str(subject / "right.png"),
                     "--out", str(tmp_path / "rec")], str(front), f"{side}x{side}", "too small")


def test_same_photo_for_two_views_warns(smoke_checkpoint, tiny_synth, tmp_path, capsys):
    subject = tiny_synth / "000000"
    # the right view: the front photo re-encoded as JPEG (nearly the same image)
    again = tmp_path / "again.jpg"
    Image.open(subject / "front.png").save(again, quality=90)
    code = main(["reconstruct", "--checkpoint", str(smoke_checkpoint), "--front", str(subject / "front.png"),
                 "--left", str(subject / "left.png"), "--right", str(again), "--out", str(tmp_path / "rec")])
    err = capsys.readouterr().err
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and str(again) in lines[0], err
    assert "same image as the front view" in lines[0]


def test_distinct_views_do_not_warn(tiny_synth):
    for subject in sorted(p for p in tiny_synth.iterdir() if p.is_dir()):
        paths = [subject / f"{v}.png" for v in ("front", "left", "right")]
        assert same_view_warnings(("front", "left", "right"), [read_image(p) for p in paths], paths) == []
    if TRIPLET.is_dir():
        paths = [TRIPLET / f"{v}.jpg" for v in ("front", "left", "right")]
        assert same_view_warnings(("front", "left", "right"), [read_image(p) for p in paths], paths) == []


def test_two_front_images_are_ambiguous(tiny_synth, tmp_path, capsys, smoke_checkpoint):
    folder = tmp_path / "views"
    folder.mkdir()
    for v in ("front", "left", "right"):
        (folder / f"{v}.png").write_bytes((tiny_synth / "000000" / f"{v}.png").read_bytes())
    Image.open(folder / "front.png").save(folder / "front.jpg")
    for argv in (["reconstruct", "--checkpoint", str(smoke_checkpoint)], ["fit"]):
        refused(capsys, [*argv, "--images", str(folder), "--out", str(tmp_path / "rec")],
                str(folder), "front.png", "front.jpg", "ambiguous")


def test_evaluate_refuses_a_single_triangle_and_a_sparse_scan(tmp_path, capsys, meshes):
    from mvf.io import load_mesh, save_mesh

    tri = tmp_path / "tri.ply"
    save_mesh(tri, np.array([[0, 0, 0], [50, 0, 0], [0, 50, 10.0]], np.float32), np.array([[0, 1, 2]]))
    refused(capsys, ["evaluate", "--pred", str(tri), "--gt", str(meshes[1])], "1 triangles", "not a face mesh")
    gt = load_mesh(meshes[1])
    rng = np.random.default_rng(0)
    sparse = tmp_path / "sparse.ply"
    save_mesh(sparse, gt.vertices[rng.choice(len(gt.vertices), 500, replace=False)], np.zeros((0, 3), np.int64))
    refused(capsys, ["evaluate", "--pred", str(meshes[0]), "--gt", str(sparse)], "scan points", "at least")


# ----------------------------------------------------------------------------- 5. one line, landmark files first
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mvf", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@needs_triplet
def test_detection_failure_is_exactly_one_stderr_line(tmp_path):
    """Mediapipe runs on the front photo, then finds no face in the blank left one: mvf's line only."""
    blank = tmp_path / "blank.png"
    write_image(blank, np.full((224, 224, 3), 90, np.uint8))
    res = _cli("reconstruct", "--front", str(TRIPLET / "front.jpg"), "--left", str(blank),
               "--right", str(TRIPLET / "right.jpg"), "--out", str(tmp_path / "rec"))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"mvf reconstruct: error: {blank}: no face found"], res.stderr


@needs_triplet
def test_bad_landmark_file_comes_before_detection(tmp_path, capsys, monkeypatch):
    import mvf.recon.views as views_module

    class NoDetection:
        def __init__(self, *a, **k):
            raise AssertionError("detection ran before the landmark file was checked")

    monkeypatch.setattr(views_module, "LandmarkDetector", NoDetection)
    bad = tmp_path / "left.npy"
    np.save(bad, np.zeros((60, 2)))
    refused(capsys, ["fit", "--images", str(TRIPLET), "--left-landmarks", str(bad), "--out", str(tmp_path / "o")],
            str(bad), "68")


# ----------------------------------------------------------------------------- 2. large photos
def test_large_framed_photo_is_worked_at_a_bounded_size(smoke_checkpoint, tiny_synth, tmp_path, capsys):
    """2048 px inputs to the checkpoint path: crops (the texture sources of framed inputs) and
    overlays at most 1024 px; the poses still refer to the full photos."""
    from mvf.recon.views import framed_views

    folder = tmp_path / "big"
    folder.mkdir()
    for v in ("front", "left", "right"):
        img = Image.open(tiny_synth / "000003" / f"{v}.png").resize((2048, 2048), Image.Resampling.BICUBIC)
        img.save(folder / f"{v}.png", compress_level=1)
    views = framed_views({"front": folder / "front.png"})
    assert views.crops.shape[-1] == FRAMED_MAX_SIDE and views.photos[0].shape[:2] == (2048, 2048)
    out = tmp_path / "rec"
    assert main(["reconstruct", "--checkpoint", str(smoke_checkpoint), "--images", str(folder),
                 "--out", str(out)]) == 0
    assert read_image(out / "overlay_front.png").shape == (1024, 3 * 1024, 3)
    params = json.loads((out / "params.json").read_text())
    assert params["crop"]["front"]["scale"] == pytest.approx(FRAMED_MAX_SIDE / 2048)
    f_crop, f_full = params["pose"]["front"][0], params["pose_full"]["front"][0]
    assert f_full == pytest.approx(f_crop * 2048 / FRAMED_MAX_SIDE, rel=1e-5)
