"""tools/render_scan.py: a textured scan rendered into a check case with scan-lps's protocol.

scan-lps itself is the ground truth: its landmarks define its face frame, its cameras.json holds
the cameras its README describes, and its PNGs are renders of the scan whose cleaned surface is
gt.ply."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCAN_LPS = ROOT.parent / "shared" / "samples" / "scan-lps"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (SCAN_LPS / "gt.ply").is_file(), reason="scan-lps sample not available")]


@pytest.fixture(scope="module")
def render_scan():
    spec = importlib.util.spec_from_file_location("render_scan", ROOT / "tools" / "render_scan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_scan"] = module
    spec.loader.exec_module(module)
    return module


def test_scan_lps_landmarks_define_its_frame_and_cameras(render_scan):
    """The frame of scan-lps's own landmarks is the identity at 91 mm between the outer eye
    corners, and its yaw/pitch/target give its cameras.json's R, t and K exactly."""
    landmarks = render_scan.read_landmarks(SCAN_LPS / "gt_landmarks.txt")
    rotation, origin, scale = render_scan.face_frame(landmarks, 91.0)
    assert np.abs(rotation - np.eye(3)).max() < 1e-4
    assert np.abs(origin).max() < 1e-3 and scale == pytest.approx(1.0, abs=1e-5)
    cameras = json.loads((SCAN_LPS / "cameras.json").read_text())["views"]
    for name, sign in render_scan.VIEW_YAW_SIGN.items():
        ref = cameras[name]
        ours = render_scan.view_camera(sign * 30.0, -15.0, np.asarray(ref["target_mm"]), 1000.0, 12.41, 512)
        for key in ("R_world_to_cam_opencv", "t_world_to_cam_opencv_mm", "K", "camera_position_mm"):
            assert np.abs(np.asarray(ours[key], float) - np.asarray(ref[key], float)).max() < 2e-4, (name, key)


def test_rendering_scan_lps_reproduces_its_front_view(render_scan):
    """gt.ply (vertex colours, interior removed) through the front camera covers the same pixels
    as front.png (rendered from the textured scan) and has its colours within a few levels."""
    from mvf.fileio import read_image
    from mvf.io import load_mesh

    mesh = load_mesh(SCAN_LPS / "gt.ply")
    camera = json.loads((SCAN_LPS / "cameras.json").read_text())["views"]["front"]
    ours = render_scan.render_view(render_scan.scan_meshes(mesh, mesh.vertices), camera) * 255.0
    ref = read_image(SCAN_LPS / "front.png").astype(np.float64)

    def face(image):  # not the background gradient (grey, constant along each row)
        return np.abs(image - image[:, :1]).sum(-1) > 4

    ours_face, ref_face = face(ours), face(ref)
    assert (ours_face & ref_face).sum() / (ours_face | ref_face).sum() > 0.99
    assert np.abs(ours - ref)[ref_face].mean() < 6.0
    assert np.abs(ours - ref)[~ours_face & ~ref_face].mean() < 0.5  # the same background


def test_menpo_ljson_groups_are_put_in_ibug_order(render_scan, tmp_path):
    """A menpo .ljson lists eyes before brows and nose; read_landmarks restores iBUG-68 order."""
    landmarks = render_scan.read_landmarks(SCAN_LPS / "gt_landmarks.txt")
    ibug = {"chin": range(0, 17), "leyebrow": range(17, 22), "reyebrow": range(22, 27), "nose": range(27, 36),
            "leye": range(36, 42), "reye": range(42, 48), "mouth": range(48, 68)}
    menpo_order = ["chin", "leye", "reye", "leyebrow", "nose", "reyebrow", "mouth"]
    points, labels = [], []
    for name in menpo_order:
        labels.append({"label": name, "mask": list(range(len(points), len(points) + len(ibug[name])))})
        points += landmarks[list(ibug[name])].tolist()
    doc = {"groups": {"LJSON": {"labels": labels, "landmarks": {"points": points}}}, "version": 2}
    (tmp_path / "lm.ljson").write_text(json.dumps(doc))
    assert np.array_equal(render_scan.read_landmarks(tmp_path / "lm.ljson"), landmarks)


def test_bad_landmarks_exit_2_with_one_line(render_scan, tmp_path, capsys):
    (tmp_path / "lm.txt").write_text("1 2 3\n4 5 6\n")
    rc = render_scan.main(["--mesh", str(SCAN_LPS / "gt.ply"), "--landmarks", str(tmp_path / "lm.txt"),
                           "--out", str(tmp_path / "case")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "lm.txt: expected 68 finite x y z rows" in err
