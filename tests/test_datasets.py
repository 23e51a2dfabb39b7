"""Datasets, augmentation and splits on tiny hand-made folders (no rendering)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from renderer.camera import make_pose, project
from mvf.data import AugmentConfig, SynthDataset, UnlabelledTriplets, augment_sample, split_subjects
from mvf.data.augment import Similarity
from mvf.data.format import FORMAT_VERSION, MARKER_NAME, write_index, write_subject
from mvf.errors import MvfError
from mvf.fileio import write_image
from mvf.recon.detect import write_pts

SIZE = 64
MARKED = [8, 30, 36, 45, 48, 54]  # well separated landmarks drawn as bright dots
NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p_blur=0.0, p_noise=0.0)


def _dots(points: np.ndarray, size: int, sigma: float = 1.2) -> np.ndarray:
    """``(size, size, 3)`` float image: dark, with a Gaussian dot at each point."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    img = np.zeros((size, size))
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.clip(img, 0, 1)[..., None], 3, -1)


def _centroid(img: torch.Tensor, at: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Intensity centroid (px) of ``(H, W)`` in a window around ``at``."""
    h, w = img.shape
    x0, y0 = int(at[0]), int(at[1])
    ys, xs = torch.meshgrid(torch.arange(max(y0 - radius, 0), min(y0 + radius + 1, h)),
                            torch.arange(max(x0 - radius, 0), min(x0 + radius + 1, w)), indexing="ij")
    wgt = img[ys, xs]
    return torch.stack([((xs + 0.5) * wgt).sum() / wgt.sum(), ((ys + 0.5) * wgt).sum() / wgt.sum()])


@pytest.fixture(scope="module")
def synth_root(model, tmp_path_factory):
    """Three subjects whose labels come from the model and whose images show dots at landmarks."""
    root = tmp_path_factory.mktemp("hand") / "ds"
    g = torch.Generator().manual_seed(0)
    names = []
    for s in range(3):
        idc = torch.randn(model.n_id, generator=g) * 0.5
        exp = torch.zeros(model.n_exp)
        verts = model.decode(idc[None], exp[None])[0]
        poses = torch.stack([make_pose(0.3, 3, y, -4 + 4 * s, 32 + s, 30) for y in (5, -35, 35)])
        lm = torch.stack([project(verts[model.landmarks], p) for p in poses])
        images = np.stack([(_dots(lm[v, MARKED].numpy(), SIZE) * 255).astype(np.uint8) for v in range(3)])
        masks = np.zeros((3, SIZE, SIZE), bool)
        masks[:, 16:48, 20:44] = True
        labels = {"id": idc.numpy(), "exp": exp.numpy(), "pose": poses.numpy(), "landmarks": lm.numpy(),
                  "landmark_visible": np.ones((3, 68), bool), "masks": masks,
                  "colours": np.full((model.n_verts, 3), 0.5, np.float32)}
        name = f"{s:06d}"
        write_subject(root / name, images, verts.numpy(), model.faces.numpy(), labels)
        names.append(name)
    write_index(root, {"format_version": FORMAT_VERSION, "generator": {}, "seed": 0, "size": SIZE,
                       "model": {"asset_id": model.asset_id}, "subjects": names})
    return root


# ---------------------------------------------------------------------------- SynthDataset
def test_synth_dataset_items_and_collate(synth_root, model):
    ds = SynthDataset(synth_root)
    assert len(ds) == 3
    item = ds[1]
    assert item["images"].shape == (3, 3, SIZE, SIZE) and item["images"].dtype == torch.float32
    assert 0 <= item["images"].min() and item["images"].max() <= 1
    assert item["id"].shape == (model.n_id,) and item["exp"].shape == (model.n_exp,)
    assert item["pose"].shape == (3, 6) and item["landmarks"].shape == (3, 68, 2)
    assert item["landmark_visible"].shape == (3, 68) and item["masks"].shape == (3, SIZE, SIZE)
    assert item["subject"] == "000001"
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["images"].shape == (2, 3, 3, SIZE, SIZE) and batch["subject"] == ["000000", "000001"]
    # view selection and order
    lf = SynthDataset(synth_root, views=("left", "front"))[1]
    assert torch.equal(lf["images"][0], item["images"][1]) and torch.equal(lf["pose"][1], item["pose"][0])
    with pytest.raises(MvfError, match="unknown view 'top'"):
        SynthDataset(synth_root, views=("top",))


def test_resizing_scales_every_pixel_quantity(synth_root, model):
    big = SynthDataset(synth_root, size=96)[0]
    ref = SynthDataset(synth_root)[0]
    verts = model.decode(big["id"][None], big["exp"][None])[0]
    for v in range(3):
        assert torch.allclose(project(verts[model.landmarks], big["pose"][v]), big["landmarks"][v], atol=1e-3)
        for k in MARKED:  # the dots moved with the landmarks
            c = _centroid(big["images"][v, 0], big["landmarks"][v, k])
            assert (c - big["landmarks"][v, k]).norm() < 0.35
    assert torch.allclose(big["landmarks"], ref["landmarks"] * 1.5)
    assert big["masks"].shape == (3, 96, 96) and abs(big["masks"].mean() - ref["masks"].mean()) < 0.02


def test_incomplete_subject_is_named(synth_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    (root / "000002" / "left.png").unlink()
    with pytest.raises(MvfError, match="000002/left.png: missing"):
        SynthDataset(root)
    assert len(SynthDataset(root, subjects=["000000", "000001"])) == 2
    with pytest.raises(MvfError, match="no index.json"):
        SynthDataset(tmp_path)


def test_datasets_without_markers_still_load(synth_root, tmp_path):
    """``done.json`` (checksums `mvf synth` writes last) is optional for readers: a dataset of an
    older version, without markers, loads the same items."""
    import shutil

    root = tmp_path / "legacy"
    shutil.copytree(synth_root, root)
    markers = sorted(root.glob(f"*/{MARKER_NAME}"))
    assert len(markers) == 3
    for m in markers:
        m.unlink()
    old, new = SynthDataset(root), SynthDataset(synth_root)
    assert len(old) == 3
    for i in range(3):
        for key in ("images", "pose", "landmarks", "masks"):
            assert torch.equal(old[i][key], new[i][key]), key
    assert len(UnlabelledTriplets(root)) == 3


# ---------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_augmented_landmarks_stay_on_their_pixels(synth_root, seed):
    cfg = AugmentConfig(scale=[0.8, 1.25], shift=0.1, rotate=15.0, **NO_COLOUR)
    item = SynthDataset(synth_root)[seed % 3]
    out = augment_sample(item, cfg, torch.Generator().manual_seed(seed))
    assert not torch.allclose(out["landmarks"], item["landmarks"])
    for v in range(3):
        for k in MARKED:
            p = out["landmarks"][v, k]
            if not (4 <= p[0] < SIZE - 4 and 4 <= p[1] < SIZE - 4):
                assert not out["landmark_visible"][v, k] or (0 <= p[0] < SIZE and 0 <= p[1] < SIZE)
                continue
            assert (_centroid(out["images"][v, 0], p) - p).norm() < 0.35, (v, k)


def test_augmented_pose_projects_onto_augmented_landmarks(synth_root, model):
    cfg = AugmentConfig(scale=[0.7, 1.3], shift=0.15, rotate=20.0)
    ds = SynthDataset(synth_root, augment=cfg, seed=5)
    item = ds[2]
    verts = model.decode(item["id"][None], item["exp"][None])[0]
    for v in range(3):
        assert torch.allclose(project(verts[model.landmarks], item["pose"][v]), item["landmarks"][v], atol=1e-3)
    # masks move with the content: the mask's centroid follows the similarity
    plain = SynthDataset(synth_root)[2]
    sim = Similarity(1.2, 0.3, (3.0, -2.0))
    moved = augment_sample(plain, AugmentConfig(**NO_COLOUR), torch.Generator().manual_seed(0),
                           photometric_too=False)
    assert moved["masks"].shape == plain["masks"].shape
    m = plain["masks"][0]
    warped = sim.warp(m[None], mode="nearest")[0]
    ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
    c0 = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
    ys, xs = torch.nonzero(warped > 0.5, as_tuple=True)
    c1 = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
    assert (sim.apply(c0, (SIZE, SIZE)) - c1).norm() < 0.6


def test_augmentation_is_seeded(synth_root):
    cfg = AugmentConfig(rotate=10.0)
    ds = SynthDataset(synth_root, augment=cfg, seed=3)
    a, b = ds[0], ds[0]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["pose"], b["pose"])
    ds.set_epoch(1)
    c = ds[0]
    assert not torch.equal(a["images"], c["images"]) and not torch.equal(a["pose"], c["pose"])
    other = SynthDataset(synth_root, augment=cfg, seed=4)[0]
    assert not torch.equal(a["pose"], other["pose"])


def test_colour_augmentation_keeps_geometry(synth_root):
    cfg = AugmentConfig(scale=[1, 1], shift=0.0, p_blur=1.0, p_noise=1.0)
    item = SynthDataset(synth_root)[0]
    out = augment_sample(item, cfg, torch.Generator().manual_seed(1))
    for key in ("landmarks", "pose", "masks", "landmark_visible"):
        assert torch.allclose(out[key], item[key], atol=1e-4), key
    assert not torch.allclose(out["images"], item["images"])
    assert out["images"].min() >= 0 and out["images"].max() <= 1


def test_landmarks_pushed_out_become_invisible(synth_root):
    item = SynthDataset(synth_root)[0]
    cfg = AugmentConfig(scale=[3.0, 3.0], shift=0.0, **NO_COLOUR)
    out = augment_sample(item, cfg, torch.Generator().manual_seed(0))
    lm = out["landmarks"]
    inside = (lm >= 0).all(-1) & (lm < SIZE).all(-1)
    assert (~inside).any() and not out["landmark_visible"][~inside].any()
    assert out["landmark_visible"][inside].all()


# ---------------------------------------------------------------------------- splits
def test_split_subjects():
    names = [f"s{i:03d}" for i in range(50)]
    train, val = split_subjects(names, 0.2, seed=0)
    assert len(val) == 10 and sorted(train + val) == names and not set(train) & set(val)
    assert split_subjects(list(reversed(names)), 0.2, seed=0) == (train, val)
    assert split_subjects(names, 0.2, seed=1)[1] != val
    # growing the dataset moves few subjects between the sets
    _, val2 = split_subjects(names + [f"s{i:03d}" for i in range(50, 60)], 0.2, seed=0)
    assert len(set(val) - set(val2)) <= 3
    assert split_subjects(["a", "b"], 0.1)[1] != [] and split_subjects(["a"], 0.5) == (["a"], [])
    assert split_subjects(names, 0.0)[1] == []
    with pytest.raises(MvfError):
        split_subjects(names, 1.0)
    with pytest.raises(MvfError, match="duplicate"):
        split_subjects(["a", "a"], 0.5)


# ---------------------------------------------------------------------------- unlabelled triplets
def _triplet(folder, size=40, fmt="png", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for v in ("front", "left", "right"):
        write_image(folder / f"{v}.{fmt}", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_unlabelled_triplets_with_landmark_files(tmp_path):
    root = tmp_path / "real"
    _triplet(root / "alice", fmt="jpg")
    _triplet(root / "bob", seed=1)
    pts = np.stack([np.linspace(2, 30, 68), np.linspace(5, 35, 68)], 1)
    write_pts(root / "bob" / "front.pts", pts)
    np.save(root / "bob" / "left.npy", pts + 1.0)
    ds = UnlabelledTriplets(root)
    assert len(ds) == 2 and ds.has_landmarks
    a, b = ds[0], ds[1]
    assert a["subject"] == "alice" and a["images"].shape == (3, 3, 40, 40)
    assert (a["landmark_visible"] == 0).all()
    assert torch.allclose(b["landmarks"][0], torch.from_numpy(pts).float(), atol=1e-3)  # .pts round trip
    assert torch.allclose(b["landmarks"][1], torch.from_numpy(pts + 1.0).float())
    assert (b["landmark_visible"][:2] == 1).all() and (b["landmark_visible"][2] == 0).all()
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["images"].shape == (2, 3, 3, 40, 40) and batch["landmarks"].shape == (2, 3, 68, 2)
    small = UnlabelledTriplets(root, size=20)[1]
    assert small["images"].shape == (3, 3, 20, 20)
    assert torch.allclose(small["landmarks"][1], torch.from_numpy(pts + 1.0).float() / 2)
    plain = UnlabelledTriplets(root, views=("front",))
    assert plain[0]["images"].shape == (1, 3, 40, 40)


def test_unlabelled_triplets_errors_and_skipping(tmp_path):
    root = tmp_path / "real"
    _triplet(root / "good")
    _triplet(root / "noleft")
    (root / "noleft" / "left.png").unlink()
    _triplet(root / "broken")
    (root / "broken" / "right.png").write_bytes(b"not an image at all")
    with pytest.raises(MvfError, match="broken/right.png: unreadable image"):
        UnlabelledTriplets(root)
    (root / "broken" / "right.png").unlink()
    _triplet(root / "broken")
    with pytest.raises(MvfError, match="noleft: no 'left' image"):
        UnlabelledTriplets(root)
    with pytest.warns(UserWarning, match="skipping subject noleft"):
        ds = UnlabelledTriplets(root, skip_bad=True)
    assert [name for name, _ in ds.skipped] == ["noleft"] and len(ds) == 2
    (root / "good" / "front.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = UnlabelledTriplets(root, skip_bad=True)
    with pytest.raises(MvfError, match="good/front.pts"):
        ds[[n for n, _, _ in ds.items].index("good")]
    with pytest.raises(MvfError, match="missing_root: not a folder"):
        UnlabelledTriplets(tmp_path / "missing_root")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MvfError, match="no usable subjects"):
        UnlabelledTriplets(tmp_path / "empty")
    _triplet(root / "mixed")
    write_image(root / "mixed" / "left.png", np.zeros((50, 50, 3), np.uint8))
    with pytest.warns(UserWarning, match="skipping subject noleft"):
        ds = UnlabelledTriplets(root, skip_bad=True)
    with pytest.raises(MvfError, match="views differ in size"):
        ds[[n for n, _, _ in ds.items].index("mixed")]


def test_unlabelled_triplets_accept_a_synthetic_dataset(synth_root):
    ds = UnlabelledTriplets(synth_root)
    ref = SynthDataset(synth_root)
    assert len(ds) == 3
    item, lab = ds[2], ref[2]
    assert torch.equal(item["images"], lab["images"]) and torch.allclose(item["landmarks"], lab["landmarks"])
    assert set(item) == {"images", "subject", "landmarks", "landmark_visible"}
