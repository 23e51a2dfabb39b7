"""MICC protocol: exact point-to-surface distances, alignment recovery, known RMSEs, readers, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from mvf.errors import MvfError
from mvf.align import Similarity, umeyama
from mvf.evaluation.micc import SurfaceQuery, evaluate_meshes, read_landmarks_3d, scaled_icp
from mvf.io import Mesh, load_mesh
from renderer.rotations import euler_deg_to_matrix_np as rotation_from_euler_deg


@pytest.fixture(scope="module")
def face():
    from mvf.face.model import DEFAULT_ASSET, FaceModel

    if not DEFAULT_ASSET.is_file():
        pytest.skip("face model asset not built")
    m = FaceModel.load()
    return Mesh(m.mean.double().numpy(), m.faces.numpy()), m.landmarks.numpy()


def _sphere(radius, subdivisions=4):
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(np.asarray(s.vertices, np.float64), np.asarray(s.faces, np.int64))


def _max_sag(mesh: Mesh, radius: float) -> float:
    """How far the facets of a tessellated sphere dip below the sphere (max over triangles)."""
    tri = mesh.vertices[mesh.faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    plane_dist = np.abs((n * tri[:, 0]).sum(1)) / np.linalg.norm(n, axis=1)
    return float(radius - plane_dist.min())


# ----------------------------------------------------------------------------- geometry
def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 3)) * 30
    true = Similarity(1.3, rotation_from_euler_deg([20, -70, 130]), np.array([5.0, -3.0, 40.0]))
    est = umeyama(src, true.apply(src))
    assert est.s == pytest.approx(1.3)
    np.testing.assert_allclose(est.R, true.R, atol=1e-12)
    np.testing.assert_allclose(est.t, true.t, atol=1e-9)
    np.testing.assert_allclose(true.compose(true.inverse()).apply(src), src, atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        umeyama(np.c_[np.arange(5.0), np.zeros(5), np.zeros(5)], np.random.rand(5, 3))


def test_point_triangle_distance_matches_pytorch3d_and_brute_force():
    from pytorch3d.loss.point_mesh_distance import point_face_distance

    mesh = _sphere(20.0, subdivisions=2)
    # make the surface irregular: squash, shift a few vertices, add a sliver-ish triangle region
    v = mesh.vertices * np.array([1.0, 0.6, 1.4])
    v[:10] += np.random.default_rng(1).normal(0, 3, (10, 3))
    rng = np.random.default_rng(2)
    q = np.r_[v[rng.integers(0, len(v), 300)] + rng.normal(0, 2, (300, 3)), rng.uniform(-45, 45, (300, 3))]
    d, cp, f, bary = SurfaceQuery(v, mesh.faces).query(q)
    # reference 1: PyTorch3D's exact squared point-to-triangle distance (float32)
    ref = point_face_distance(torch.tensor(q, dtype=torch.float32), torch.tensor([0]),
                              torch.tensor(v[mesh.faces], dtype=torch.float32), torch.tensor([0]), len(q))
    np.testing.assert_allclose(d, ref.double().sqrt().numpy(), atol=2e-4)
    # reference 2: every query against every triangle (trimesh's point-triangle kernel, float64)
    qq = np.repeat(q, len(mesh.faces), 0)
    tri = np.tile(v[mesh.faces], (len(q), 1, 1))
    p_all = trimesh.triangles.closest_point(tri, qq)
    brute = np.linalg.norm(qq - p_all, axis=1).reshape(len(q), -1).min(1)
    np.testing.assert_allclose(d, brute, atol=1e-9)
    # closest points lie on their triangle, with valid barycentrics
    np.testing.assert_allclose(np.linalg.norm(q - cp, axis=1), d, atol=1e-9)
    np.testing.assert_allclose(np.einsum("qk,qkj->qj", bary, v[mesh.faces[f]]), cp, atol=1e-9)
    assert (bary >= -1e-12).all() and np.allclose(bary.sum(1), 1.0)


def test_boundary_detection():
    grid = trimesh.creation.box().subdivide()  # closed: no boundary
    sq = SurfaceQuery(grid.vertices, grid.faces)
    assert not sq.boundary_vertices.any()
    plane = Mesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float), np.array([[0, 1, 2], [0, 2, 3]]))
    sq = SurfaceQuery(plane.vertices, plane.faces)
    d, _, f, b = sq.query(np.array([[0.5, 0.5, 1.0], [2.0, 0.5, 0.0]]))
    np.testing.assert_allclose(d, [1.0, 1.0])
    assert sq.on_boundary(f, b).tolist() == [False, True]


# ----------------------------------------------------------------------------- protocol
def test_identical_meshes_give_zero(face):
    mesh, _ = face
    res = evaluate_meshes(mesh, mesh)
    assert res.rmse < 1e-6 and res.median < 1e-6
    assert res.transform.s == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(res.transform.R, np.eye(3), atol=1e-6)
    nose = mesh.vertices[np.argmax(mesh.vertices[:, 2] - mesh.vertices[:, 2].mean())]
    assert res.n_gt_points == int((np.linalg.norm(mesh.vertices - nose, axis=1) <= 95.0).sum())
    assert 1000 < res.n_gt_points < len(mesh.vertices)  # the crop really removes points


def test_known_similarity_is_recovered_from_the_nose_tip(face):
    mesh, _ = face
    true = Similarity(1.08, rotation_from_euler_deg([-12, 23, 6]), np.array([30.0, -20.0, 100.0]))
    pred = Mesh(true.inverse().apply(mesh.vertices), mesh.faces)  # pred = gt moved away
    res = evaluate_meshes(pred, mesh)
    assert res.init.startswith("nose tip")
    assert res.transform.s == pytest.approx(1.08, abs=1e-5)
    np.testing.assert_allclose(res.transform.apply(pred.vertices), mesh.vertices, atol=1e-3)
    assert res.rmse < 1e-3


def test_known_similarity_is_recovered_from_landmarks(face, tmp_path):
    mesh, lmk = face
    # a rotation far outside the coarse search range: only the landmarks can find it
    true = Similarity(0.9, rotation_from_euler_deg([40, 100, -60]), np.array([-5.0, 8.0, 3.0]))
    pred = Mesh(true.inverse().apply(mesh.vertices), mesh.faces)
    np.save(tmp_path / "pred_lm.npy", lmk)  # vertex indices
    np.savetxt(tmp_path / "gt_lm.txt", mesh.vertices[lmk])  # coordinates
    pl = read_landmarks_3d(tmp_path / "pred_lm.npy", pred.vertices)
    gl = read_landmarks_3d(tmp_path / "gt_lm.txt", mesh.vertices)
    res = evaluate_meshes(pred, mesh, pl, gl)
    assert res.init == "landmarks"
    np.testing.assert_allclose(res.transform.apply(pred.vertices), mesh.vertices, atol=1e-3)
    assert res.rmse < 1e-3


def test_icp_methods_from_a_perturbed_start(face):
    mesh, _ = face
    true = Similarity(1.05, rotation_from_euler_deg([5, -10, 3]), np.array([3.0, 4.0, 5.0]))
    pred = Mesh(true.inverse().apply(mesh.vertices), mesh.faces)
    start = Similarity(1.05 * 1.01, rotation_from_euler_deg([2, 1, -2]) @ true.R, true.t + [2.0, -1.0, 1.0])
    crop = mesh.vertices[np.linalg.norm(mesh.vertices - mesh.vertices[np.argmax(mesh.vertices[:, 2])], axis=1) <= 95]
    err0 = np.abs(start.apply(pred.vertices) - mesh.vertices).max()
    plane = scaled_icp(pred, crop, start, method="plane", iters=30, max_points=3000)
    assert plane.converged and np.abs(plane.transform.apply(pred.vertices) - mesh.vertices).max() < 1e-4
    # classic point-to-point ICP slides slowly along the surface but must still make progress
    point = scaled_icp(pred, crop, start, method="point", iters=12, max_points=1500)
    assert np.abs(point.transform.apply(pred.vertices) - mesh.vertices).max() < 0.75 * err0
    with pytest.raises(ValueError, match="method"):
        scaled_icp(pred, crop, start, method="normal")


def test_known_noise_gives_its_rms(face):
    mesh, _ = face
    normals = np.asarray(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).vertex_normals)
    noise = np.random.default_rng(1).normal(0.0, 0.5, len(mesh.vertices))
    gt = Mesh(mesh.vertices + noise[:, None] * normals, mesh.faces)
    res = evaluate_meshes(mesh, gt)
    in_crop = np.linalg.norm(gt.vertices - res.gt_nose, axis=1) <= 95.0
    expected = float(np.sqrt(np.mean(noise[in_crop] ** 2)))
    # distances to the surface are at most |noise| (curvature, ICP) but close to it
    assert 0.95 * expected < res.rmse <= expected
    np.testing.assert_allclose(res.transform.R, np.eye(3), atol=2e-3)
    assert res.transform.s == pytest.approx(1.0, abs=2e-3)


def test_concentric_spheres_known_offset():
    pred, gt = _sphere(40.0), _sphere(41.0)  # every scan point is 1 mm outside the prediction
    rigid = evaluate_meshes(pred, gt, scale=False)
    assert rigid.transform.s == 1.0
    sag = _max_sag(pred, 40.0)
    assert sag < 0.05
    # each scan point is 1 mm from the sphere, and the facets lie at most `sag` further inside
    assert 1.0 - 1e-9 <= rigid.rmse <= 1.0 + sag
    np.testing.assert_allclose(rigid.transform.t, 0.0, atol=0.05)
    scaled = evaluate_meshes(pred, gt, scale=True, icp_iters=15)  # scaled ICP absorbs the offset
    assert scaled.transform.s == pytest.approx(41.0 / 40.0, abs=2e-3)
    assert scaled.rmse < 0.05


def test_protocol_errors(face):
    mesh, lmk = face
    cloud = Mesh(mesh.vertices, np.zeros((0, 3), np.int64))
    with pytest.raises(MvfError, match="no triangles"):
        evaluate_meshes(cloud, mesh)
    with pytest.raises(MvfError, match="both"):
        evaluate_meshes(mesh, mesh, pred_landmarks=mesh.vertices[lmk])
    with pytest.raises(MvfError, match="has 68 points but"):
        evaluate_meshes(mesh, mesh, mesh.vertices[lmk], mesh.vertices[lmk[:10]])
    with pytest.raises(MvfError, match="wrong units"):
        evaluate_meshes(mesh, Mesh(mesh.vertices * 1000.0, mesh.faces))  # scan in micrometres
    with pytest.raises(MvfError, match="out of range"):
        evaluate_meshes(mesh, mesh, gt_nose_index=10 ** 7)


# ----------------------------------------------------------------------------- readers
VRML2 = """#VRML V2.0 utf8
# comment with [ brackets { and "quotes" and -1
WorldInfo { title "not # a comment" info [ "a", "b" ] }
DEF T1 Transform {
  translation 10 0 0  rotation 0 0 1 1.5707963267948966  scale 2 2 2
  children [
    Shape {
      appearance Appearance { material Material { diffuseColor 1 0 0 } }
      geometry IndexedFaceSet {
        coord DEF C1 Coordinate { point [ 0 0 0, 1 0 0, 1 1 0, 0 1 0, 0.5 1.5 0 ] }
        coordIndex [ 0, 1, 2, 3, -1, 3, 2, 4, -1 ]   # a quad and a triangle
        texCoord TextureCoordinate { point [ 0 0, 1 0, 1 1, 0 1, 0.5 1 ] }
        solid FALSE creaseAngle 0.5
      }
    }
  ]
}
Shape { geometry IndexedFaceSet { coord USE C1 coordIndex [ 0 1 2 4 3 ] ccw FALSE } }
ROUTE a.b TO c.d
"""

VRML1 = """#VRML V1.0 ascii
Separator {
  Coordinate3 { point [ 0 0 0, 1 0 0, 0 1 0, 1 1 1 ] }
  IndexedFaceSet { coordIndex [ 0, 1, 2, -1, 1, 3, 2, -1 ] }
}
"""


def test_vrml_reader(tmp_path):
    f = tmp_path / "scan.wrl"
    f.write_text(VRML2)
    m = load_mesh(f)
    assert m.vertices.shape == (10, 3) and m.faces.shape == (6, 3)
    # first shape: x' = 10 + 2 * Rz(90) x
    base = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 1.5, 0]])
    moved = np.c_[-2 * base[:, 1], 2 * base[:, 0], 2 * base[:, 2]] + [10, 0, 0]
    np.testing.assert_allclose(m.vertices[:5], moved, atol=1e-12)
    np.testing.assert_allclose(m.vertices[5:], base)  # shared coordinates, no transform
    assert m.faces[:3].tolist() == [[0, 1, 2], [0, 2, 3], [3, 2, 4]]
    # pentagon without a trailing -1, fan-triangulated, flipped for ccw FALSE
    assert m.faces[3:].tolist() == [[7, 6, 5], [9, 7, 5], [8, 9, 5]]
    g = tmp_path / "old.wrl"
    g.write_text(VRML1)
    m1 = load_mesh(g)
    assert m1.vertices.shape == (4, 3) and m1.faces.tolist() == [[0, 1, 2], [1, 3, 2]]


def test_vrml_of_a_real_mesh_evaluates_against_itself(face, tmp_path):
    mesh, _ = face
    pts = ",\n".join(f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices)
    idx = "\n".join(f"{a} {b} {c} -1" for a, b, c in mesh.faces)
    f = tmp_path / "face.wrl"
    f.write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet {\n coord Coordinate { point [\n"
                 f"{pts}\n] }}\n coordIndex [\n{idx}\n] }} }}\n")
    m = load_mesh(f)
    np.testing.assert_allclose(m.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(m.faces, mesh.faces)


@pytest.mark.parametrize("content,message", [
    ("Shape { }", "no '#VRML' header"),
    ("#VRML V2.0 utf8\nShape { geometry Box { size 1 1 1 } }", "no IndexedFaceSet"),
    ("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] }"
     " coordIndex [ 0 1 7 -1 ] } }", "out of range"),
    ("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [ 0 0 0", "unterminated|end of file"),
    ("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord USE NOPE coordIndex [ 0 1 2 ] } }", "undefined node"),
    ("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [ 0 0 0 1 ] }"
     " coordIndex [ 0 ] } }", "multiple of 3"),
])
def test_bad_vrml_names_the_file(tmp_path, content, message):
    f = tmp_path / "bad.wrl"
    f.write_text(content)
    with pytest.raises(MvfError, match=message) as e:
        load_mesh(f)
    assert str(e.value).startswith(str(f)) and "\n" not in str(e.value)


def test_obj_and_ply_keep_vertex_order(tmp_path):
    obj = tmp_path / "m.obj"  # vertex 1 used with two different UVs: must not be split
    obj.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 5 5 5\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                   "f 1/1 2/2 3/3\nf 1/4 3/3 4/4\nf 2/1 5/2 3/4\n")
    m = load_mesh(obj)
    assert m.vertices.tolist()[4] == [5, 5, 5] and len(m.vertices) == 5
    assert m.faces.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2]]
    rng = np.random.default_rng(0)
    t = trimesh.Trimesh(rng.normal(size=(30, 3)), rng.integers(0, 30, (40, 3)), process=False)
    t.export(tmp_path / "m.ply")
    p = load_mesh(tmp_path / "m.ply")
    np.testing.assert_allclose(p.vertices, t.vertices, atol=1e-6)
    np.testing.assert_array_equal(p.faces, t.faces)


def test_mesh_reader_errors(tmp_path):
    with pytest.raises(MvfError, match="mesh file not found"):
        load_mesh(tmp_path / "none.obj")
    (tmp_path / "m.xyzw").write_text("1 2 3")
    with pytest.raises(MvfError, match="unsupported mesh type"):
        load_mesh(tmp_path / "m.xyzw")
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x00")
    with pytest.raises(MvfError, match="bad.ply"):
        load_mesh(tmp_path / "bad.ply")


def test_landmark_3d_reader(tmp_path):
    verts = np.arange(30, dtype=float).reshape(10, 3)
    (tmp_path / "a.pp").write_text('<!DOCTYPE PickedPoints>\n<PickedPoints>\n'
                                   '<point x="1" y="2" z="3" name="0" active="1"/>\n'
                                   '<point x="4" y="5" z="6" name="1"/>\n<point x="0" y="0" z="0" active="0"/>\n'
                                   '<point x="7" y="8" z="9.5" name="2"/>\n</PickedPoints>\n')
    np.testing.assert_allclose(read_landmarks_3d(tmp_path / "a.pp", verts), [[1, 2, 3], [4, 5, 6], [7, 8, 9.5]])
    (tmp_path / "i.txt").write_text("# ids\n0\n3\n9\n")
    np.testing.assert_allclose(read_landmarks_3d(tmp_path / "i.txt", verts), verts[[0, 3, 9]])
    (tmp_path / "c.csv").write_text("1,2,3\n4,5,6\n7,8,9\n")
    np.testing.assert_allclose(read_landmarks_3d(tmp_path / "c.csv", verts), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    for name, content, message in [("o.txt", "0\n3\n10\n", "out of range"), ("f.txt", "0.5\n1\n2\n", "integer"),
                                   ("s.txt", "1 2\n3 4\n5 6\n", "expected"), ("two.txt", "0\n1\n", "at least 3"),
                                   ("x.pp", "<PickedPoints><point x='a'/>", "unreadable")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(MvfError, match=message):
            read_landmarks_3d(tmp_path / name, verts)


# ----------------------------------------------------------------------------- CLI
def test_cli_evaluate_writes_json(tmp_path, capsys):
    from mvf.cli import main

    pred, gt = _sphere(40.0, 3), _sphere(41.0, 3)
    trimesh.Trimesh(pred.vertices, pred.faces, process=False).export(tmp_path / "pred.ply")
    pts = ", ".join(f"{x} {y} {z}" for x, y, z in gt.vertices)
    idx = " ".join(f"{a} {b} {c} -1" for a, b, c in gt.faces)
    (tmp_path / "gt.wrl").write_text(f"#VRML V2.0 utf8\nShape {{ geometry IndexedFaceSet {{ coord Coordinate "
                                     f"{{ point [ {pts} ] }} coordIndex [ {idx} ] }} }}\n")
    out = tmp_path / "res" / "eval.json"
    rc = main(["evaluate", "--pred", str(tmp_path / "pred.ply"), "--gt", str(tmp_path / "gt.wrl"),
               "--rigid", "--json", str(out), "--aligned-out", str(tmp_path / "aligned.ply")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and str(out) in printed
    data = json.loads(out.read_text())
    assert 1.0 - 1e-6 <= data["rmse_mm"] <= 1.0 + _max_sag(pred, 40.0)
    assert data["direction"] == "scan points -> predicted surface"
    assert data["crop_radius_mm"] == 95.0 and data["transform_pred_to_gt"]["scale"] == 1.0
    aligned = load_mesh(tmp_path / "aligned.ply")
    assert aligned.vertices.shape == pred.vertices.shape
    assert not list(out.parent.glob(".*tmp*"))  # atomic write left no temporaries

    rc = main(["evaluate", "--pred", str(tmp_path / "missing.obj"), "--gt", str(tmp_path / "gt.wrl")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "missing.obj: mesh file not found" in err


SCAN_LPS = Path(__file__).resolve().parents[2] / "shared" / "samples" / "scan-lps"


def test_cli_mean_face_on_scan_lps_with_model_landmarks(tmp_path, capsys, face):
    """Without --pred-landmarks a face-model mesh is scored with the model's 68 landmark vertices."""
    from mvf.cli import main

    if not (SCAN_LPS / "gt.ply").is_file():
        pytest.skip("scan-lps sample not available")
    (tmp_path / "z.json").write_text('{"id": [], "exp": []}')
    assert main(["export", "--params", str(tmp_path / "z.json"), "--out", str(tmp_path / "mean.obj")]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--pred", str(tmp_path / "mean.obj"), "--gt", str(SCAN_LPS / "gt.ply"),
                 "--gt-landmarks", str(SCAN_LPS / "gt_landmarks.txt"), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["init"] == "landmarks"
    # README reference 1.834 mm; point-to-plane ICP stops within ~0.02 mm of it depending on ties
    assert data["rmse_mm"] == pytest.approx(1.834, abs=0.03)
    # a mesh that is not the face model's needs explicit landmarks
    trimesh.creation.icosphere(2, 50.0).export(tmp_path / "ball.ply")
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "ball.ply"), "--gt", str(SCAN_LPS / "gt.ply"),
                 "--gt-landmarks", str(SCAN_LPS / "gt_landmarks.txt")]) == 2
    err = capsys.readouterr().err
    assert "ball.ply" in err and "--pred-landmarks" in err
