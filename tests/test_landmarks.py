"""Landmarks: mediapipe -> iBUG-68 on the shared real triplet, yaw, view order, landmark files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvf.errors import MvfError
from mvf.fileio import read_image
from mvf.recon.detect import (
    IBUG_GROUPS, MEDIAPIPE_TO_IBUG68, LandmarkDetector, check_view_order, estimate_yaw,
    load_or_detect, read_landmark_file, write_pts,
)

TRIPLET = Path(__file__).resolve().parents[2] / "shared" / "samples" / "triplet-1"
needs_triplet = pytest.mark.skipif(not (TRIPLET / "front.jpg").is_file(), reason="shared triplet missing")


@pytest.fixture(scope="module")
def detector():
    det = LandmarkDetector()
    yield det
    det.close()


@pytest.fixture(scope="module")
def triplet(detector):
    if not (TRIPLET / "front.jpg").is_file():
        pytest.skip("shared triplet missing")
    out = {}
    for view in ("front", "left", "right"):
        path = TRIPLET / f"{view}.jpg"
        img = read_image(path)
        out[view] = (img, detector.detect(img, path))
    return out


def test_mapping_table_is_a_valid_index_table():
    assert len(MEDIAPIPE_TO_IBUG68) == 68
    assert len(set(MEDIAPIPE_TO_IBUG68)) == 68
    assert all(0 <= i < 478 for i in MEDIAPIPE_TO_IBUG68)
    assert sorted(i for r in IBUG_GROUPS.values() for i in r) == list(range(68))


@needs_triplet
def test_front_view_landmarks_are_plausible(triplet):
    img, lm = triplet["front"]
    p = lm.points
    assert p.shape == (68, 2) and lm.raw478.shape == (478, 3)
    h, w = img.shape[:2]
    assert (p >= 0).all() and (p[:, 0] <= w).all() and (p[:, 1] <= h).all()
    assert lm.visible.all()
    right_eye, left_eye = p[36:42], p[42:48]
    # subject's right eye is on the image's left in a frontal photo
    assert right_eye[:, 0].max() < left_eye[:, 0].min()
    assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0]  # outer-inner-inner-outer corners
    eye_y = np.r_[right_eye[:, 1], left_eye[:, 1]].mean()
    nose = p[30]
    assert right_eye[:, 0].mean() < nose[0] < left_eye[:, 0].mean()
    assert nose[1] > eye_y + 10
    assert p[17:27, 1].mean() < eye_y  # brows above the eyes
    assert (p[27:31, 1][1:] > p[27:31, 1][:-1]).all()  # nose ridge runs downwards
    mouth = p[48:68]
    assert mouth[:, 1].min() > nose[1] and mouth[:, 1].min() > p[33, 1]
    assert p[48, 0] < p[51, 0] < p[54, 0] and p[51, 1] < p[57, 1]
    jaw = p[0:17]
    assert (np.diff(jaw[:9, 1]) > 0).all() and (np.diff(jaw[8:, 1]) < 0).all()  # down to the chin, up
    assert jaw[:8, 0].max() < jaw[8, 0] < jaw[9:, 0].min()  # 0-7 on the image's left
    assert jaw[:, 0].min() < right_eye[:, 0].min() and jaw[:, 0].max() > left_eye[:, 0].max()
    assert np.argmax(p[:, 1]) == 8  # chin is the lowest point
    assert abs(lm.yaw_deg) < 8.0


@needs_triplet
def test_side_views_have_the_conventional_yaw_sign(triplet):
    yaws = {v: triplet[v][1].yaw_deg for v in ("front", "left", "right")}
    # left view: nose towards the image's left, negative yaw; right view positive
    assert yaws["left"] < -15.0 and yaws["right"] > 15.0
    left = triplet["left"][1].points
    assert left[30, 0] < 0.5 * (left[39, 0] + left[42, 0])  # nose tip left of the eye midpoint
    # the far (subject's right) jawline is hidden in the left view, and the opposite for right
    assert not triplet["left"][1].visible[0:3].any() and triplet["left"][1].visible[14:17].all()
    assert not triplet["right"][1].visible[14:17].any() and triplet["right"][1].visible[0:3].all()
    check = check_view_order(yaws)
    assert check.warnings == [] and not check.needs_swap


@needs_triplet
def test_swapped_side_views_are_detected_and_swap_suggested(triplet):
    yaws = {"front": triplet["front"][1].yaw_deg, "left": triplet["right"][1].yaw_deg,
            "right": triplet["left"][1].yaw_deg}
    check = check_view_order(yaws)
    assert check.needs_swap
    assert check.suggested == {"left": "right", "front": "front", "right": "left"}
    assert any("left view has yaw" in w for w in check.warnings)
    assert any("right view has yaw" in w for w in check.warnings)


def test_view_order_rules():
    ok = check_view_order({"front": 2.0, "left": -30.0, "right": 35.0})
    assert ok.warnings == [] and ok.suggested == {"front": "front", "left": "left", "right": "right"}
    rot = check_view_order({"front": -30.0, "left": 1.0, "right": 30.0})  # front/left exchanged
    assert rot.suggested == {"left": "front", "front": "left", "right": "right"}
    # both side views turned the same way: warn, but no trustworthy reassignment
    odd = check_view_order({"front": 0.0, "left": 25.0, "right": 30.0})
    assert odd.warnings and not odd.needs_swap
    with pytest.raises(MvfError, match="unknown view"):
        check_view_order({"top": 0.0})


def test_estimate_yaw_on_projected_face_model():
    import torch

    from renderer.camera import make_pose, project
    from mvf.face.model import DEFAULT_ASSET, FaceModel

    if not DEFAULT_ASSET.is_file():
        pytest.skip("face model asset not built")
    model = FaceModel.load()
    pts3d = model.mean[model.landmarks]
    for pitch, yaw, roll in [(0, 0, 0), (0, -40, 0), (10, 30, -15), (-15, -60, 20), (5, 70, 0)]:
        uv = project(pts3d, make_pose(1.3, pitch, yaw, roll, 112.0, 112.0)).to(torch.float64).numpy()
        assert abs(estimate_yaw(uv) - yaw) < 3.0, (pitch, yaw, roll)


def test_no_face_raises_naming_the_image(detector, tmp_path):
    blank = np.full((224, 224, 3), 128, np.uint8)
    with pytest.raises(MvfError, match=r"^blank\.png: no face found$"):
        detector.detect(blank, "blank.png")
    with pytest.raises(MvfError, match="uint8"):
        detector.detect(blank.astype(np.float32), "x.png")


def test_unreadable_image_is_a_one_line_error(tmp_path):
    bad = tmp_path / "front.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(MvfError, match="front.jpg: unreadable image"):
        read_image(bad)


# ----------------------------------------------------------------------------- files
def _points(seed=0):
    return np.random.default_rng(seed).uniform(5, 200, (68, 2))


def test_pts_round_trip_and_one_based_convention(tmp_path):
    pts = _points()
    f = tmp_path / "a.pts"
    write_pts(f, pts)
    np.testing.assert_allclose(read_landmark_file(f), pts, atol=1e-4)
    text = f.read_text().splitlines()
    assert text[:3] == ["version: 1", "n_points: 68", "{"] and text[-1] == "}"
    # .pts coordinates are 1-based pixel centres: (1, 1) is the centre of the top-left pixel
    hand = tmp_path / "b.pts"
    hand.write_text("version: 1\nn_points: 68\n{\n" + "1.0 1.0\n" * 68 + "}\n")
    np.testing.assert_allclose(read_landmark_file(hand), np.full((68, 2), 0.5))


def test_npy_landmark_files(tmp_path):
    pts = _points(1)
    np.save(tmp_path / "a.npy", pts)
    np.testing.assert_array_equal(read_landmark_file(tmp_path / "a.npy"), pts)
    np.save(tmp_path / "b.npy", np.c_[pts, np.ones(68)])
    np.testing.assert_array_equal(read_landmark_file(tmp_path / "b.npy"), pts)


@pytest.mark.parametrize("name,content,message", [
    ("short.pts", "version: 1\nn_points: 67\n{\n" + "1 2\n" * 67 + "}\n", "expected 68 landmarks, found 67"),
    ("count.pts", "version: 1\nn_points: 68\n{\n" + "1 2\n" * 60 + "}\n", "n_points says 68 but 60"),
    ("nobrace.pts", "version: 1\nn_points: 68\n" + "1 2\n" * 68, "missing '{'"),
    ("badline.pts", "version: 1\n{\n" + "1 2\n" * 67 + "1 x\n}\n", "bad point line"),
    ("nan.pts", "{\n" + "nan 2\n" * 68 + "}\n", "NaN"),
    ("corrupt.npy", "garbage", "not a readable .npy"),
    ("pts.txt", "1 2\n", "unsupported landmark file type"),
])
def test_bad_landmark_files_name_the_file(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(MvfError, match=message) as e:
        read_landmark_file(f)
    assert str(e.value).startswith(str(f)) and "\n" not in str(e.value)


def test_wrong_count_npy_and_missing_file(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((5, 2)))
    with pytest.raises(MvfError, match=r"w\.npy: expected a \(68, 2\) or \(68, 3\) array, got shape \(5, 2\)"):
        read_landmark_file(tmp_path / "w.npy")
    with pytest.raises(MvfError, match="landmark file not found"):
        read_landmark_file(tmp_path / "nope.pts")


def test_landmark_file_takes_precedence_over_detection(detector, tmp_path):
    pts = _points(2)
    f = tmp_path / "front.pts"
    write_pts(f, pts)
    blank = np.full((224, 224, 3), 128, np.uint8)  # detection would fail: no face
    lm = load_or_detect(blank, "front.png", landmark_file=f, detector=detector)
    np.testing.assert_allclose(lm.points, pts, atol=1e-4)
    assert lm.source == str(f) and lm.raw478 is None
    assert lm.yaw_deg == pytest.approx(estimate_yaw(lm.points))
    with pytest.raises(MvfError, match="front.png: no face found"):
        load_or_detect(blank, "front.png", landmark_file=None, detector=detector)


@needs_triplet
def test_detections_are_in_the_pixel_centre_frame(detector):
    """Box-downscaling a smooth image by k must scale the points by exactly 1/k in the pixel-centre
    frame; mediapipe's raw x * W would be off by (k - 1) / 2 large-image pixels."""
    from PIL import Image

    k, offsets = 4, []
    for view in ("front", "left", "right"):
        small = read_image(TRIPLET / f"{view}.jpg")
        big = np.asarray(Image.fromarray(small).resize((896, 896), Image.Resampling.BICUBIC))
        down = big.astype(np.float64).reshape(896 // k, k, 896 // k, k, 3).mean((1, 3)).round().astype(np.uint8)
        p_big = detector.detect_raw(big, "big")[:, :2]
        p_down = detector.detect_raw(down, "down")[:, :2]
        offsets.append((k * p_down - p_big).mean(0))
    bias = np.mean(offsets, 0)
    assert np.abs(bias).max() < 0.8, bias  # uncorrected: about -(k - 1) / 2 = -1.5 and worse


def test_deferred_import_runs_the_module_on_first_attribute_use(tmp_path, monkeypatch):
    """`defer_import` (used for mediapipe's matplotlib.pyplot): `import` statements get the
    placeholder without running the module; the first attribute access runs it once."""
    import sys

    from mvf.recon.detect import defer_import

    (tmp_path / "mvf_probe_mod.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'ran')!r}).open('a').write('x')\n"
        "VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mvf_probe_mod", raising=False)
    defer_import("mvf_probe_mod")
    import mvf_probe_mod as probe  # noqa: E402  (the statement mediapipe runs)

    assert not (tmp_path / "ran").exists()
    assert probe.VALUE == 42 and probe.VALUE == 42
    assert (tmp_path / "ran").read_text() == "x"
    defer_import("mvf_no_such_module_anywhere")
    assert "mvf_no_such_module_anywhere" not in sys.modules
    sys.modules.pop("mvf_probe_mod", None)
