"""MVF-Net network: shapes, fusion rules, the zero-output face, shared heads, local weights."""
from __future__ import annotations

import pytest
import torch

from mvf.net.backbones import build_backbone
from renderer.camera import project
from renderer.rotations import euler_to_matrix
from mvf.errors import MvfError
from mvf.net.network import FACE_FILL, PoseNorm, build_network
from mvf.net.config import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(face, **kw):
    torch.manual_seed(0)
    return build_network(ModelConfig(**kw), face).eval()


@pytest.mark.parametrize("backbone,size", [("vgg", 64), ("resnet18", 64), ("mobilenet_v3_small", 72)])
@pytest.mark.parametrize("fusion", ["concat", "mean", "attention"])
def test_output_shapes(face, backbone, size, fusion):
    net = _net(face, backbone=backbone, image_size=size, fusion=fusion, n_id=60, n_exp=20, hidden=64)
    counts = [3] if fusion == "concat" else [1, 3, 5]
    with torch.no_grad():
        for v in counts:
            out = net(torch.rand(2, v, 3, size, size))
            assert out["id"].shape == (2, 60)
            assert out["exp"].shape == (2, 20)
            assert out["pose"].shape == (2, v, 6)
            assert all(torch.isfinite(t).all() for t in out.values())


@pytest.mark.parametrize("n_views", [1, 2, 4])
def test_concat_rejects_other_view_counts(face, n_views):
    net = _net(face, image_size=64, fusion="concat", hidden=32)
    with pytest.raises(MvfError, match="concat"):
        net(torch.rand(1, n_views, 3, 64, 64))


def test_concat_rejects_wrong_view_order(face):
    net = _net(face, image_size=64, fusion="concat", hidden=32)
    with pytest.raises(MvfError, match="front, left, right"):
        net(torch.rand(1, 3, 3, 64, 64), views=("left", "front", "right"))


def test_wrong_image_size_is_an_error(face):
    net = _net(face, image_size=64, fusion="mean", hidden=32)
    with pytest.raises(MvfError, match="64x64"):
        net(torch.rand(1, 1, 3, 80, 80))


@pytest.mark.parametrize("size", [64, 224])
def test_zero_output_is_the_mean_face_frontal_and_centred(face, size):
    """Zero raw outputs: mean face, identity rotation, its 68-landmark box centred in the image
    with side FACE_FILL * size (the synthetic data's framing)."""
    net = _net(face, image_size=size, fusion="mean", hidden=32)
    out = net.decode(torch.zeros(1, net.cfg.n_id + net.cfg.n_exp), torch.zeros(1, 2, 6))
    assert torch.equal(out["id"], torch.zeros(1, 100)) and torch.equal(out["exp"], torch.zeros(1, 53))
    verts = face.decode(out["id"], out["exp"])
    assert torch.allclose(verts[0], face.mean)
    pose = out["pose"]
    assert torch.allclose(euler_to_matrix(pose[..., 1:4]), torch.eye(3).expand(1, 2, 3, 3))  # frontal
    uv = project(face.landmarks_3d(verts)[:, None], pose)[0, 0]  # (68, 2)
    lo, hi = uv.min(0).values, uv.max(0).values
    assert torch.allclose(0.5 * (lo + hi), torch.tensor([size / 2, size / 2]), atol=1e-3 * size)
    assert float((hi - lo).max()) / size == pytest.approx(FACE_FILL, abs=1e-4)  # plausibly sized


def test_fresh_network_predicts_the_zero_output(face):
    """The heads' last layers start at zero: any image gives the mean face, frontal, centred."""
    net = _net(face, image_size=64, fusion="attention", hidden=32)
    with torch.no_grad():
        out = net(torch.rand(2, 3, 3, 64, 64))
    assert torch.equal(out["id"], torch.zeros(2, 100))
    expected = torch.tensor(net.pose_norm.mean).expand(2, 3, 6)
    assert torch.allclose(out["pose"], expected)


def test_pose_norm_round_trip_and_documented_constants(face):
    lm = face.landmarks_3d(face.mean[None])[0]
    norm = PoseNorm.for_landmarks(128, lm)
    side = float((lm[:, :2].max(0).values - lm[:, :2].min(0).values).max())
    f0 = FACE_FILL * 128 / side
    assert norm.mean[0] == pytest.approx(f0) and norm.scale[0] == pytest.approx(0.25 * f0)
    assert norm.mean[4] == pytest.approx(64.0, abs=1e-3) and norm.scale[4] == pytest.approx(12.8)
    raw = torch.randn(4, 3, 6)
    assert torch.allclose(norm.encode(norm.decode(raw)), raw, atol=1e-5)


@pytest.mark.parametrize("fusion", ["mean", "attention"])
def test_views_share_weights_and_fusion_is_order_free(face, fusion):
    """Swapping two views swaps their poses and leaves id/exp unchanged (shared backbone + pose head)."""
    net = _net(face, image_size=64, fusion=fusion, hidden=32)
    torch.manual_seed(1)
    for p in net.parameters():  # move off the zero init so outputs depend on the images
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 3, 64, 64)
    with torch.no_grad():
        a = net(x)
        b = net(x[:, [2, 0, 1]])
    assert torch.allclose(a["pose"][:, [2, 0, 1]], b["pose"], atol=1e-4)
    assert torch.allclose(a["id"], b["id"], atol=1e-4)
    assert not torch.allclose(a["pose"][:, 0], a["pose"][:, 1])


def test_concat_depends_on_view_order(face):
    net = _net(face, image_size=64, fusion="concat", hidden=32)
    torch.manual_seed(1)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(net(x)["id"], net(x[:, [0, 2, 1]])["id"])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_pretrained_weights_load_from_a_local_file(tmp_path, name):
    import torchvision

    torch.manual_seed(3)
    ref = getattr(torchvision.models, name)(weights=None)  # a torchvision-format checkpoint
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone(name, path)
    ref_state = ref.state_dict()
    for k, v in bb.trunk.state_dict().items():
        assert torch.equal(v, ref_state[k])


def test_mobilenet_v3_small_is_torchvisions_without_importing_it():
    """The hand-built MobileNetV3-Small features equal torchvision's: the same keys and, from the
    same seed, the same initial weights and random stream after them (so a seed trains the same
    network); the same outputs in training and eval mode."""
    import torchvision

    from mvf.net.backbones import mobilenet_v3_small_features

    torch.manual_seed(5)
    ref = torchvision.models.mobilenet_v3_small(weights=None)
    ref_next = torch.rand(4)
    torch.manual_seed(5)
    mine = mobilenet_v3_small_features()
    mine_next = torch.rand(4)
    ref_state, state = ref.features.state_dict(), mine.state_dict()
    assert list(state) == list(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in state)
    assert torch.equal(mine_next, ref_next)
    x = torch.rand(2, 3, 96, 96)
    for train in (True, False):
        ref.train(train)
        mine.train(train)
        with torch.no_grad():
            assert torch.allclose(mine(x), ref.features(x), atol=1e-6)


def test_pretrained_errors(tmp_path):
    with pytest.raises(MvfError, match="not found"):
        build_backbone("resnet18", tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(MvfError, match="not a readable"):
        build_backbone("resnet18", bad)
    other = tmp_path / "mobilenet.pth"
    torch.save(build_backbone("mobilenet_v3_small").trunk.state_dict(), other)
    with pytest.raises(MvfError, match="does not match the 'resnet18' backbone"):
        build_backbone("resnet18", other)


def test_vgg_loads_torchvision_vgg16_bn_features(tmp_path):
    """torchvision's vgg16_bn layer stack (its `make_layers`, keys ``features.*``) loads as is."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(4)
    features = make_layers(cfgs["D"], batch_norm=True)
    path = tmp_path / "vgg.pth"
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a classifier head is ignored
    torch.save(state, path)
    bb = build_backbone("vgg", path)
    assert torch.equal(bb.trunk.features[0].weight, features[0].weight)
    assert torch.equal(bb.trunk.features[41].running_var, features[41].running_var)


def test_soft_argmax_known_answers():
    from mvf.net.network import soft_argmax

    logits = torch.full((1, 2, 12, 12), -50.0)
    logits[0, 0, 3, 7] = 50.0  # a sharp peak in cell (row 3, col 7)
    logits[0, 1] = 0.0  # flat: the expectation is the image centre
    uv = soft_argmax(logits, 96)
    assert torch.allclose(uv[0, 0], torch.tensor([(7 + 0.5) * 8, (3 + 0.5) * 8]), atol=1e-3)
    assert torch.allclose(uv[0, 1], torch.tensor([48.0, 48.0]), atol=1e-3)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_landmark_head_outputs_and_gradients(face, backbone):
    net = _net(face, backbone=backbone, image_size=64, fusion="attention", hidden=32, landmark_head=True).train()
    x = torch.rand(2, 1, 3, 64, 64)
    out = net(x)
    assert out["landmarks"].shape == (2, 1, 68, 2)
    assert ((out["landmarks"] > 0) & (out["landmarks"] < 64)).all()
    out["landmarks"].sum().backward()
    head = net.encoder.landmark_head.out[-1].weight.grad
    assert head is not None and head.abs().sum() > 0
    assert "landmarks" not in _net(face, image_size=64, fusion="mean", hidden=32)(x)


@pytest.mark.parametrize("fusion,n_views", [("concat", 3), ("mean", 1), ("attention", 5)])
def test_geometry_branch_from_landmarks_alone(face, fusion, n_views):
    """``net(None, landmarks=...)`` runs the geometry branch only (the image branch gets no
    gradient), and the image path adds that branch's outputs on the head's own landmarks."""
    torch.manual_seed(0)
    net = _net(face, image_size=64, fusion=fusion, hidden=32, landmark_head=True).train()
    with torch.no_grad():  # the heads' last layers start at zero: give the geometry heads weights
        for head in (net.geo_head_3dmm, net.geo_head_pose):
            head[-1].weight.normal_(0, 0.01)
    lm = 64 * torch.rand(2, n_views, 68, 2)
    out = net(None, landmarks=lm)
    assert out["id"].shape == (2, net.cfg.n_id) and out["pose"].shape == (2, n_views, 6)
    (out["id"].sum() + out["pose"].sum()).backward()
    assert net.geometry.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.encoder.parameters())
    x = torch.rand(2, n_views, 3, 64, 64)
    with torch.no_grad():  # image heads still zero: the full output is the geometry branch's
        full = net.eval()(x)
        geo = net(None, landmarks=full["landmarks"])
    assert not torch.allclose(geo["id"], torch.zeros_like(geo["id"]))
    for k in ("id", "exp", "pose"):
        assert torch.allclose(full[k], geo[k], atol=1e-6)


def test_landmark_input_errors(face):
    with pytest.raises(MvfError, match="no landmark head"):
        _net(face, image_size=64, fusion="mean", hidden=32)(None, landmarks=torch.zeros(1, 1, 68, 2))
    net = _net(face, image_size=64, fusion="mean", hidden=32, landmark_head=True)
    with pytest.raises(MvfError, match=r"landmarks must be \(B, V, 68, 2\)"):
        net(None, landmarks=torch.zeros(1, 1, 5, 2))


def test_predict_refines_towards_the_head_landmarks(face):
    """With ``refine: landmarks``, `mvf.recon.refine.predict` returns the network's output fitted to its
    own landmarks: the refined shape and poses reproject closer to them than the raw
    regression does, and landmarks are kept. With ``refine: none`` it is the network itself."""
    from mvf.face.landmarks import LandmarkProjector
    from mvf.recon.refine import predict

    net = _net(face, image_size=64, fusion="concat", hidden=32, landmark_head=True, refine="landmarks")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # a non-trivial untrained network: spread-out landmarks
            p.add_(0.05 * torch.randn_like(p))
        images = torch.rand(2, 3, 3, 64, 64)
        raw = net(images)
        refined = predict(net, face, images)
    projector = LandmarkProjector(face)

    def reprojection_px(out):
        lm = projector(face.decode(out["id"], out["exp"]), out["pose"])
        return float((lm - out["landmarks"]).norm(dim=-1).mean())

    assert torch.equal(refined["landmarks"], raw["landmarks"])
    assert reprojection_px(refined) < 0.8 * reprojection_px(raw)
    plain = _net(face, image_size=64, fusion="concat", hidden=32, landmark_head=True)
    with torch.no_grad():
        assert torch.equal(predict(plain, face, images)["id"], plain(images)["id"])


def test_bf16_precision_matches_fp32_and_trains(face):
    """``precision: bf16`` runs the backbone and landmark head under bfloat16 autocast: with the
    same weights the outputs stay close to float32's (landmarks within 1 px at 64 px), every
    output is float32, and gradients reach the backbone's float32 weights."""
    torch.manual_seed(0)
    fp32 = _net(face, image_size=64, fusion="mean", hidden=32, landmark_head=True)
    bf16 = _net(face, image_size=64, fusion="mean", hidden=32, landmark_head=True, precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    with torch.no_grad():
        for p in fp32.parameters():  # non-zero heads, so the comparison means something
            p.add_(0.02 * torch.randn_like(p))
        bf16.load_state_dict(fp32.state_dict())
        images = torch.rand(2, 2, 3, 64, 64)
        a, b = fp32(images), bf16(images)
    for key in ("id", "exp", "pose", "landmarks"):
        assert b[key].dtype == torch.float32
    assert float((a["landmarks"] - b["landmarks"]).norm(dim=-1).max()) < 1.0
    assert torch.allclose(a["id"], b["id"], atol=0.05 * float(a["id"].abs().max()) + 1e-3)
    bf16.train()
    out = bf16(images)
    (out["id"].square().sum() + out["landmarks"].sum()).backward()
    grad = bf16.encoder.backbone.trunk.conv1.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and float(grad.abs().sum()) > 0


def test_auto_precision_is_bf16_only_where_the_device_runs_it_fast(face):
    """``precision: auto`` gives exactly the bf16 network's outputs on a CPU that oneDNN says runs
    bfloat16 natively, and exactly float32's elsewhere (bf16 on an AVX2-only CPU is ~20x slower)."""
    from mvf.net.network import fast_bf16, uses_bf16

    cpu = torch.device("cpu")
    assert fast_bf16(cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert uses_bf16("bf16", cpu) and not uses_bf16("fp32", cpu)
    assert uses_bf16("auto", cpu) == fast_bf16(cpu)
    torch.manual_seed(0)
    nets = {p: _net(face, image_size=64, fusion="mean", hidden=32, landmark_head=True, precision=p)
            for p in ("fp32", "bf16", "auto")}
    with torch.no_grad():
        for p in nets["fp32"].parameters():
            p.add_(0.02 * torch.randn_like(p))
        for p in ("bf16", "auto"):
            nets[p].load_state_dict(nets["fp32"].state_dict())
        images = torch.rand(1, 2, 3, 64, 64)
        out = {p: n(images)["landmarks"] for p, n in nets.items()}
    expected = out["bf16"] if fast_bf16(cpu) else out["fp32"]
    assert torch.equal(out["auto"], expected)
    assert not torch.equal(out["bf16"], out["fp32"])


@pytest.mark.parametrize("backbone", ["vgg", "resnet18", "mobilenet_v3_small"])
def test_backbone_pyramid_strides_and_depths(backbone):
    """`Backbone.pyramid` gives maps at strides 4, 8, 16 and 32 of the declared depths; the last
    is the backbone's own output (what the pooled view feature uses)."""
    from mvf.net.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone(backbone).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        maps = net.pyramid(x)
        assert [m.shape[1] for m in maps] == list(net.pyramid_channels)
        assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
        assert torch.equal(maps[-1], net(x))
