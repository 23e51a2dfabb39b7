"""Picture sheets and the `mvf visualize` command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mvf.cli import main
from mvf.face.model import DEFAULT_ASSET
from mvf.fileio import read_image
from renderer.pictures import TITLE_PX, compose, heat, view_panels, view_sheets

needs_model = pytest.mark.skipif(not DEFAULT_ASSET.is_file(), reason="face model asset not built")


def test_heat_and_compose():
    ramp = heat(np.array([[0.0, 0.125, 0.25, 1.0]]))
    assert ramp.shape == (1, 4, 3)
    assert np.allclose(ramp[0, 0], 0.0) and np.allclose(ramp[0, 2], ramp[0, 3])
    assert (np.diff(ramp[0, :3].sum(-1)) > 0).all()  # brighter for larger errors
    panels = [(f"p{i}", np.full((10, 12, 3), i / 5.0)) for i in range(5)]
    sheet = compose(panels, columns=2)
    assert sheet.dtype == np.uint8
    assert sheet.shape == (3 * (10 + TITLE_PX) + 2 * 2, 2 * 12 + 2, 3)
    assert sheet[TITLE_PX + 5, 5, 0] == 0 and sheet[TITLE_PX + 5, 14 + 5, 0] == round(0.2 * 255)


@needs_model
def test_view_sheets_of_a_synthetic_triplet_show_near_zero_error():
    from mvf.commands.visualize import random_scene
    from mvf.face.model import FaceModel

    model = FaceModel.load()
    verts, poses, images, _ = random_scene(model, seed=3, size=64)
    panels = view_panels(images, verts, model.faces, poses)
    assert len(panels) == 3
    titles = [t for t, _ in panels[1]]
    assert titles[0] == "left: input" and "front -> left" in titles and "co-visible in right" in titles
    assert len(panels[1]) == 4 + 2 + 2
    err_title = titles[3]
    assert float(err_title.split()[-1].split("/")[0]) < 2.0  # MAE in 1/255 units
    extra = [[("flow", np.zeros((64, 64, 3)))]] * 3
    sheets = view_sheets(images, verts, model.faces, poses, extra_panels=extra)
    assert len(sheets) == 3 and all(s.dtype == np.uint8 for s in sheets)
    assert sheets[0].shape == (3 * (64 + TITLE_PX) + 2 * 2, 4 * 66 - 2, 3)


@needs_model
def test_visualize_command_random_then_params(tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["visualize", "--random", "--seed", "2", "--size", "48", "--out", str(out)]) == 0
    for v in ("front", "left", "right"):
        assert read_image(out / f"sheet_{v}.png").shape[2] == 3
        assert read_image(out / "images" / f"{v}.png").shape == (48, 48, 3)
    params = json.loads((out / "params.json").read_text())
    assert set(params) == {"id", "exp", "pose"}
    # round trip: the random face's own params and renders through the --params path, at 2x
    out2 = tmp_path / "again"
    assert main(["visualize", "--params", str(out / "params.json"), "--images", str(out / "images"),
                 "--size", "96", "--out", str(out2)]) == 0
    sheet = read_image(out2 / "sheet_front.png")
    assert sheet.shape[1] == 4 * 98 - 2
    # short lists of coefficients and the list form of poses are accepted
    short = {"id": params["id"][:3], "exp": [], "pose": [params["pose"][v] for v in ("front", "left", "right")]}
    (tmp_path / "short.json").write_text(json.dumps(short))
    assert main(["visualize", "--params", str(tmp_path / "short.json"), "--images", str(out / "images"),
                 "--out", str(tmp_path / "short")]) == 0


@needs_model
@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"id": [], "exp": [], "pose": {"front": [1, 0, 0, 0, 1, 1]}}', "lacks view 'left'"),
    ('{"id": [], "exp": [], "pose": [[1, 0, 0, 0, 1], [1, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1, 1]]}', "6 numbers"),
    ('{"id": [1.0] , "exp": [], "poses": []}', "lacks view 'front'"),  # extra keys are ignored
    ('{"id": [1e9] , "exp": [], "pose": []}', "beyond the bound"),
    ('{"id": [0.0] , "exp": [], "pose": [[0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1, 1]]}', "f = 0 must be positive"),
    ('{"id": [0.0] , "exp": [], "pose": [[1, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1, 1]], '
     '"camera_distance_mm": 5}', "'camera_distance_mm' must be"),
])
def test_visualize_bad_params_exit_2_with_one_line(tmp_path, capsys, content, needle):
    images = tmp_path / "imgs"
    images.mkdir()
    from mvf.fileio import write_image

    for v in ("front", "left", "right"):
        write_image(images / f"{v}.png", np.zeros((16, 16, 3), np.uint8))
    path = tmp_path / "p.json"
    path.write_text(content)
    code = main(["visualize", "--params", str(path), "--images", str(images), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and str(path) in err and err.count("\n") == 1


@needs_model
def test_visualize_missing_images_exit_2(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text('{"id": [], "exp": [], "pose": [[1, 0, 0, 0, 8, 8], [1, 0, 0, 0, 8, 8], [1, 0, 0, 0, 8, 8]]}')
    (tmp_path / "imgs").mkdir()
    code = main(["visualize", "--params", str(path), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "no front/left/right images" in err
    from mvf.fileio import write_image

    write_image(tmp_path / "imgs" / "front.png", np.zeros((16, 16, 3), np.uint8))
    code = main(["visualize", "--params", str(path), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path)])
    assert code == 2 and "no 'left' image" in capsys.readouterr().err
    code = main(["visualize", "--random", "--params", str(path), "--out", str(tmp_path)])
    assert code == 2 and "drop --params" in capsys.readouterr().err


@needs_model
def test_sheets_of_a_pinhole_triplet_take_one_mesh_per_view(tmp_path):
    """Views rendered through a close pinhole camera: the sheets of the per-view (pre-warped)
    meshes show near-zero photometric error, the one weak-perspective mesh does not; `mvf
    visualize` takes the camera from params.json's ``camera_distance_mm``."""
    import torch

    from mvf.commands.visualize import random_scene, read_params
    from mvf.face.model import FaceModel
    from mvf.recon.fit import face_camera
    from renderer.camera import view_meshes
    from renderer.shading import Lights, render
    from renderer.textures import smooth_random_colours

    model = FaceModel.load()
    verts, poses, _, params = random_scene(model, seed=3, size=64)
    camera = face_camera(model, 250.0)
    meshes = view_meshes(verts, poses, camera)
    colours = smooth_random_colours(verts, torch.Generator().manual_seed(3))
    flat = Lights(ambient=(1.0, 1.0, 1.0), directional=[])  # the warp bends normals: no shading
    rgba = render(meshes, model.faces, colours[None].expand(3, -1, -1), poses, (64, 64), lights=flat,
                  background=(0.5, 0.5, 0.5))
    images = rgba[..., :3].permute(0, 3, 1, 2).contiguous()

    def mae(mesh):
        return [float(p[3][0].split()[-1].split("/")[0]) for p in view_panels(images, mesh, model.faces, poses)]

    per_view, weak = mae(meshes), mae(verts)
    assert max(per_view) < 2.0, per_view  # MAE in 1/255 units
    assert min(weak) > 1.5 * max(per_view), (weak, per_view)
    # the command reads the camera from params.json
    path = tmp_path / "params.json"
    path.write_text(json.dumps({**params, "camera_distance_mm": 250.0}))
    assert read_params(path, model)[3] == 250.0
    path.write_text(json.dumps({**params, "camera_distance_mm": None}))
    assert read_params(path, model)[3] == 0.0
