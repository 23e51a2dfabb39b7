"""mvf.io: one entry point, round trips per format, errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mvf.errors import MvfError
from mvf.io import Mesh, load_mesh, save_mesh
from mvf.io.obj import read_polygons, triangulate
from mvf.io.ply import ply_bytes

RNG = np.random.default_rng(0)
VERTS = RNG.uniform(-50, 50, (12, 3))
FACES = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8], [8, 9, 10], [10, 11, 0]])


def test_obj_round_trip_with_uvs_and_texture(tmp_path):
    uvs = RNG.uniform(0, 1, (12, 2)).astype(np.float32)
    tex = RNG.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    written = save_mesh(tmp_path / "m.obj", torch.from_numpy(VERTS), torch.from_numpy(FACES),
                        verts_uvs=torch.from_numpy(uvs), faces_uvs=FACES[:, ::-1].copy(), texture=tex)
    assert [p.name for p in written] == ["m.obj", "m.mtl", "m.png"]
    m = load_mesh(tmp_path / "m.obj")
    assert isinstance(m, Mesh) and m.vertices.dtype == np.float64 and m.faces.dtype == np.int64
    np.testing.assert_allclose(m.vertices, VERTS, atol=1e-5)
    np.testing.assert_array_equal(m.faces, FACES)
    np.testing.assert_allclose(m.verts_uvs, uvs, atol=1e-6)
    np.testing.assert_array_equal(m.faces_uvs, FACES[:, ::-1])
    np.testing.assert_array_equal(np.round(m.texture * 255).astype(np.uint8), tex)
    assert not list(tmp_path.glob(".*"))  # atomic writes left no temporaries


def test_obj_without_uvs_and_quads(tmp_path):
    save_mesh(tmp_path / "plain.obj", VERTS, FACES)
    m = load_mesh(tmp_path / "plain.obj")
    assert m.verts_uvs is None and m.texture is None and np.array_equal(m.faces, FACES)
    (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                                    "f 1/1 2/2 3/3 4/4\nf -4/-4 -2/-2 -1/-1\n")
    obj = read_polygons(tmp_path / "q.obj")
    assert obj.poly_v == [[0, 1, 2, 3], [0, 2, 3]] and obj.poly_vt == [[0, 1, 2, 3], [0, 2, 3]]
    faces, faces_uvs = triangulate(obj.poly_v, obj.poly_vt)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]] and np.array_equal(faces, faces_uvs)
    assert np.array_equal(load_mesh(tmp_path / "q.obj").faces, faces)


def test_ply_round_trip_with_colours(tmp_path):
    colours = RNG.uniform(0, 1, (12, 3))
    assert save_mesh(tmp_path / "c.ply", VERTS, FACES, colours=colours) == [tmp_path / "c.ply"]
    m = load_mesh(tmp_path / "c.ply")
    np.testing.assert_allclose(m.vertices, VERTS.astype(np.float32), atol=0)
    np.testing.assert_array_equal(m.faces, FACES)
    assert np.abs(m.colours - colours).max() <= 0.5 / 255 + 1e-6
    assert (tmp_path / "c.ply").read_bytes() == ply_bytes(VERTS, FACES, colours)
    save_mesh(tmp_path / "g.ply", VERTS, FACES)
    assert load_mesh(tmp_path / "g.ply").colours is None


@pytest.mark.parametrize("suffix", [".off", ".stl"])
def test_off_stl_round_trip(tmp_path, suffix):
    save_mesh(tmp_path / f"m{suffix}", VERTS, FACES)
    m = load_mesh(tmp_path / f"m{suffix}")
    tri = m.vertices[m.faces]
    np.testing.assert_allclose(tri, VERTS[FACES], atol=1e-4)  # STL stores triangles, not shared vertices


def test_vrml_read(tmp_path):
    (tmp_path / "s.wrl").write_text(
        "#VRML V2.0 utf8\nTransform { translation 1 2 3 children [ Shape { geometry IndexedFaceSet {\n"
        "coord Coordinate { point [ 0 0 0, 1 0 0, 1 1 0, 0 1 0 ] } coordIndex [ 0 1 2 3 -1 ] } } ] }\n")
    m = load_mesh(tmp_path / "s.wrl")
    np.testing.assert_allclose(m.vertices, [[1, 2, 3], [2, 2, 3], [2, 3, 3], [1, 3, 3]])
    assert m.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    with pytest.raises(MvfError, match="s.wrl: unsupported mesh type"):
        save_mesh(tmp_path / "s.wrl", VERTS, FACES)


def test_bad_files_name_the_file(tmp_path):
    cases = {"missing.obj": None, "empty.obj": "# nothing\n", "text.ply": "not a ply",
             "nan.obj": "v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "range.obj": "v 0 0 0\nf 1 2 3\n",
             "bad.stl": "solid x\nfacet normal oops\n", "bad.off": "OFF\n3 1 0\n0 0\n",
             "bad.wrl": "#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coordIndex [ 0 1 2 ] } }\n",
             "m.xyz": "1 2 3\n"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(MvfError, match=name.replace(".", r"\.")):
            load_mesh(tmp_path / name)
    with pytest.raises(MvfError, match=r"w\.ply: expected verts"):
        save_mesh(tmp_path / "w.ply", VERTS[:, :2], FACES)
    with pytest.raises(MvfError, match=r"t\.obj: a texture needs UVs"):
        save_mesh(tmp_path / "t.obj", VERTS, FACES, texture=np.zeros((4, 4, 3)))
