"""Output folders are checked before work starts: `mvf.fileio.prepare_output_dir`."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mvf.errors import MvfError
from mvf.fileio import prepare_output_dir, prepare_output_file


def test_prepare_output_dir_creates_nested_folders(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and os.listdir(out) == []  # the write probe leaves nothing behind


@pytest.mark.parametrize("sub, needle", [("f", "is a file"), ("f/x/y", "lies under a file")])
def test_prepare_output_dir_refuses_files(tmp_path, sub, needle):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MvfError, match=needle) as e:
        prepare_output_dir(tmp_path / sub)
    assert str(tmp_path / sub) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_prepare_output_dir_refuses_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(MvfError, match="can't be created or written"):
            prepare_output_dir(ro / "out")
    finally:
        ro.chmod(0o700)


def test_prepare_output_dir_refuses_proc_and_sys():
    for bad in ("/proc/x/x", "/sys/x"):
        with pytest.raises(MvfError, match="can't be created or written"):
            prepare_output_dir(bad)


def test_prepare_output_file_refuses_a_folder(tmp_path):
    with pytest.raises(MvfError, match="is a folder"):
        prepare_output_file(tmp_path)
    assert prepare_output_file(tmp_path / "new" / "m.obj").parent.is_dir()


def test_written_png_round_trips_exactly(tmp_path):
    """PNGs are written at `PNG_COMPRESS_LEVEL` (lossless): the pixels read back are the same."""
    import numpy as np

    from mvf.fileio import read_image, write_image

    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", img)
    assert np.array_equal(read_image(tmp_path / "a.png"), img)


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to display), as phone
    cameras write portrait photos, is read upright."""
    from PIL import Image

    from mvf.fileio import read_image

    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:10] = 255  # a white band at the top
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # 90° anticlockwise: the band on the left
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "portrait.jpg", exif=exif.tobytes(), quality=95)
    img.save(tmp_path / "plain.jpg", quality=95)
    got = read_image(tmp_path / "portrait.jpg")
    assert got.shape == (60, 40, 3)
    assert np.abs(got.astype(int) - upright).mean() < 3.0
    assert read_image(tmp_path / "plain.jpg").shape == (40, 60, 3)  # no tag: as stored
