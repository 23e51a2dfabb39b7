"""Shading through PyTorch3D's HardPhongShader on fast and reference Fragments."""
from __future__ import annotations

import pytest
import torch

from renderer.camera import make_pose
from mvf.face.model import DEFAULT_ASSET, FaceModel
from renderer import Lights, interpolate_vertex_attr, pixel_mask, rasterize, render
from renderer.textures import smooth_random_colours

needs_model = pytest.mark.skipif(not DEFAULT_ASSET.is_file(), reason="face model asset not built")


@needs_model
def test_shading_on_fast_fragments_equals_reference():
    face = FaceModel.load()
    size = (64, 64)
    pose = make_pose(0.2, 10, 30, -5, 32, 28)[None]
    colours = smooth_random_colours(face.mean, torch.Generator().manual_seed(0))[None]
    lights = Lights(ambient=(0.3, 0.3, 0.35),
                    directional=[((0.3, 0.5, 1.0), (0.6, 0.5, 0.5)), ((-1.0, 0.0, 0.2), (0.2, 0.3, 0.3))])
    fast = rasterize(face.mean[None], face.faces, pose, size, backend="fast")
    ref = rasterize(face.mean[None], face.faces, pose, size, backend="pytorch3d")
    img_fast = render(face.mean[None], face.faces, colours, pose, size, lights, fragments=fast)
    img_ref = render(face.mean[None], face.faces, colours, pose, size, lights, fragments=ref)
    agree = fast.pix_to_face[..., 0] == ref.pix_to_face[..., 0]
    assert agree.float().mean() >= 0.995
    diff = (img_fast - img_ref).abs().amax(-1)[agree]
    assert diff.max() < 1e-4
    assert torch.equal(img_fast[..., 3], pixel_mask(fast).float())
    # the render is not trivially dark or flat
    lit = img_fast[..., :3][pixel_mask(fast)]
    assert lit.mean() > 0.3 and lit.std() > 0.05


def flat_square(z: float = 0.0, half: float = 40.0):
    verts = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])  # counter-clockwise seen from +z: normal +z
    return verts, faces


def test_lambertian_lighting_values_and_background():
    verts, faces = flat_square()
    albedo = torch.tensor([0.8, 0.5, 0.2])
    colours = albedo.expand(1, 4, 3)
    size = (32, 32)
    # With the shared diagonal through pixel centres, neither triangle strictly contains them:
    # both backends leave those 16 pixels empty (PyTorch3D's rule, reproduced by `fast`).
    centred = make_pose(0.2, 0, 0, 0, 16, 16)[None]
    gap = [rasterize(verts[None], faces, centred, size, backend=b).pix_to_face for b in ("fast", "pytorch3d")]
    assert torch.equal(gap[0], gap[1]) and (gap[0] >= 0).sum() == 16 * 16 - 16
    pose = make_pose(0.2, 0, 0, 0, 16.3, 15.8)[None]
    mask = rasterize(verts[None], faces, pose, size).pix_to_face[0, ..., 0] >= 0
    assert mask.sum() == 16 * 16

    def shade(lights):
        return render(verts[None], faces, colours, pose, size, lights)[0]

    front = shade(Lights(ambient=(0.2, 0.2, 0.2), directional=[((0.0, 0.0, 1.0), (0.5, 0.5, 0.5))]))
    assert torch.allclose(front[mask][:, :3], albedo * 0.7, atol=1e-5)
    oblique = shade(Lights(ambient=(0.0, 0.0, 0.0), directional=[((0.0, 1.0, 1.0), (1.0, 1.0, 1.0))]))
    assert torch.allclose(oblique[mask][:, :3], albedo * 2 ** -0.5, atol=1e-5)
    behind = shade(Lights(ambient=(0.1, 0.1, 0.1), directional=[((0.0, 0.0, -1.0), (1.0, 1.0, 1.0))]))
    assert torch.allclose(behind[mask][:, :3], albedo * 0.1, atol=1e-5)
    two = shade(Lights(ambient=(0.0, 0.0, 0.0), directional=[((0.0, 0.0, 1.0), (0.25, 0.25, 0.25)),
                                                              ((1.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                                                              ((0.0, 0.0, 1.0), (0.5, 0.0, 0.0))]))
    assert torch.allclose(two[mask][:, :3], albedo * torch.tensor([0.75, 0.25, 0.25]), atol=1e-5)
    assert torch.equal(front[..., 3], mask.float())
    assert (front[~mask][:, :3] == 0).all()
    grey = render(verts[None], faces, colours, pose, size, background=(0.5, 0.25, 1.0))[0]
    assert torch.allclose(grey[~mask][:, :3], torch.tensor([0.5, 0.25, 1.0]))


def test_render_and_interpolation_are_differentiable_in_colours():
    verts, faces = flat_square()
    colours = torch.rand(1, 4, 3, requires_grad=True)
    pose = make_pose(0.2, 0, 20, 0, 16, 16)[None]
    frag = rasterize(verts[None], faces, pose, (32, 32))
    img = render(verts[None], faces, colours, pose, (32, 32), fragments=frag)
    img[..., :3].sum().backward()
    assert colours.grad is not None and (colours.grad > 0).all()
    # interpolating the vertex positions reproduces the surface: z stays 0, x, y within the square
    pts = interpolate_vertex_attr(frag, verts[None], faces)[0]
    covered = frag.pix_to_face[0, ..., 0] >= 0
    assert pts[covered][:, 2].abs().max() < 1e-4
    assert pts[covered][:, :2].abs().max() <= 40.0
    assert (pts[~covered] == 0).all()
