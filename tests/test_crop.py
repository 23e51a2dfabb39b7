"""MVF-Net-style crops: the transform round trip, where a known pattern lands, padding, poses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from renderer.camera import make_pose, project
from mvf.recon.crop import ENLARGE, VERTICAL_SHIFT, CropTransform, crop_box, crop_image
from mvf.errors import MvfError


def _blob_image(h, w, centre, sigma=5.0):
    """A white Gaussian blob on black, centred at ``centre`` in the pixel-centre frame."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    g = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma ** 2))
    return (np.repeat(g[..., None], 3, -1) * 255 + 0.5).astype(np.uint8)


def _centroid(img):
    g = img[..., 0].astype(np.float64)
    g = np.where(g > 0.2 * g.max(), g, 0.0)
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
    return np.array([(g * xx).sum() / g.sum(), (g * yy).sum() / g.sum()])


def test_point_round_trip_numpy_and_torch():
    t = CropTransform(0.37, (-12.5, 40.25), 224)
    pts = np.random.default_rng(0).uniform(-100, 900, (50, 2))
    np.testing.assert_allclose(t.to_full(t.to_crop(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(t.to_crop(t.to_full(pts)), pts, atol=1e-9)
    tp = torch.tensor(pts, dtype=torch.float64)
    torch.testing.assert_close(t.to_full(t.to_crop(tp)), tp)
    np.testing.assert_allclose(t.to_crop(tp).numpy(), t.to_crop(pts))
    # the crop's top-left corner is the photo point `offset`
    np.testing.assert_allclose(t.to_crop(np.array([[-12.5, 40.25]])), [[0.0, 0.0]])


def test_crop_box_follows_mvfnet():
    pts = np.array([[100.0, 50.0], [180.0, 50.0], [100.0, 150.0], [140.0, 170.0]])
    x0, y0, side = crop_box(pts)
    w, h = 80.0, 120.0
    assert side == pytest.approx(ENLARGE * max(w, h))
    assert x0 + side / 2 == pytest.approx(140.0)
    assert y0 + side / 2 == pytest.approx(110.0 - VERTICAL_SHIFT * h)


@pytest.mark.parametrize("out_size,centre,pad", [
    (224, (123.3, 77.8), "constant"), (64, (40.2, 250.7), "edge"), (400, (300.6, 20.4), "constant"),
])
def test_known_pattern_lands_where_the_transform_says(out_size, centre, pad):
    img = _blob_image(300, 400, centre)
    lms = np.array(centre) + np.array([[-60.0, -50.0], [70.0, -40.0], [0.0, 90.0]])
    crop, t = crop_image(img, lms, out_size=out_size, pad=pad)
    assert crop.shape == (out_size, out_size, 3) and crop.dtype == np.uint8
    expected = t.to_crop(np.array(centre))
    assert np.abs(_centroid(crop) - expected).max() < 0.15
    # and back onto the photo
    assert np.abs(t.to_full(_centroid(crop)) - np.array(centre)).max() < 0.15 / t.scale


def test_padding_outside_the_photo():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (200, 100, 50)
    img[:, 0] = (10, 250, 90)  # distinct left column
    lms = np.array([[2.0, 30.0], [40.0, 30.0], [20.0, 70.0]])  # box leaves the photo on the left
    crop_c, t = crop_image(img, lms, out_size=96, pad="constant")
    crop_e, t2 = crop_image(img, lms, out_size=96, pad="edge")
    assert t == t2 and t.offset[0] < -5
    # crop pixels whose centres map well outside the photo (x < -2 photo px)
    xs = (np.arange(96) + 0.5)
    outside = t.to_full(np.c_[xs, np.full(96, 48.0)])[:, 0] < -2.0
    assert outside.sum() >= 3
    assert (crop_c[48, outside] == 0).all()
    assert (np.abs(crop_e[48, outside].astype(int) - (10, 250, 90)) <= 1).all()
    inside = t.to_full(np.c_[xs, np.full(96, 48.0)])[:, 0] > 5.0
    assert (np.abs(crop_c[48, inside].astype(int) - (200, 100, 50)) <= 1).all()
    with pytest.raises(ValueError, match="pad"):
        crop_image(img, lms, pad="reflect")


def test_landmarks_fill_the_crop_as_documented():
    rng = np.random.default_rng(3)
    pts = rng.uniform(100, 300, (68, 2))
    img = np.zeros((480, 640, 3), np.uint8)
    _, t = crop_image(img, pts, out_size=224)
    c = t.to_crop(pts)
    ext = c.max(0) - c.min(0)
    assert ext.max() == pytest.approx(224 / ENLARGE)
    assert (c > 0).all() and (c < 224).all()


def test_pose_maps_between_crop_and_photo():
    t = CropTransform(0.45, (37.0, -21.5), 224)
    verts = torch.randn(1, 200, 3, dtype=torch.float64) * 40.0
    crop_pose = make_pose(1.1, 10.0, -35.0, 5.0, 110.0, 118.0).to(torch.float64)
    full_pose = t.pose_to_full(crop_pose)
    torch.testing.assert_close(full_pose[1:4], crop_pose[1:4])  # angles unchanged
    assert full_pose[0].item() == pytest.approx(1.1 / 0.45)
    on_crop = project(verts, crop_pose)
    torch.testing.assert_close(project(verts, full_pose), t.to_full(on_crop))
    torch.testing.assert_close(t.pose_to_crop(full_pose), crop_pose)
    np_pose = crop_pose.numpy()
    np.testing.assert_allclose(t.pose_to_full(np_pose), full_pose.numpy())


def test_to_dict_round_trip_and_errors():
    t = CropTransform(0.3125, (-4.5, 17.25), 224)
    assert CropTransform.from_dict(t.to_dict()) == t
    import json
    assert CropTransform.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    for bad in ({"scale": 1.0, "offset": [0, 0]}, {"scale": -1, "offset": [0, 0], "out_size": 224},
                {"scale": 1.0, "offset": [0], "out_size": 224}):
        with pytest.raises(MvfError, match="params.json"):
            CropTransform.from_dict(bad, source="params.json")


def test_detection_on_the_crop_maps_back_onto_the_photo():
    """Landmarks detected on the crop, mapped with `to_full`, agree with those detected on the photo."""
    from pathlib import Path

    from PIL import Image

    from mvf.fileio import read_image
    from mvf.recon.detect import LandmarkDetector

    front = Path(__file__).resolve().parents[2] / "shared" / "samples" / "triplet-1" / "front.jpg"
    if not front.is_file():
        pytest.skip("shared triplet missing")
    small = read_image(front)
    photo = np.asarray(Image.fromarray(small).resize((448, 448), Image.Resampling.BICUBIC))
    photo = np.pad(photo, ((60, 0), (0, 150), (0, 0)), constant_values=70)  # off-centre face
    with LandmarkDetector() as det:
        full = det.detect(photo, "photo")
        crop, t = crop_image(photo, full, out_size=224)
        on_crop = det.detect(crop, "crop")
    back = t.to_full(on_crop.points)
    err = np.linalg.norm(back - full.points, axis=1)
    assert t.scale < 0.6  # the crop really is a downscaled view
    # photo pixels, face ~300 px wide; detector jitter between the two scales is ~1-2 px
    assert np.median(err) < 2.5 and err.max() < 8.0
    assert np.abs((back - full.points).mean(0)).max() < 1.5  # no systematic shift
