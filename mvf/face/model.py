"""The 3D Morphable Model: building the asset from ICT-FaceKit (or BFM09) and decoding shapes.

``verts = mean + id @ E_id + exp @ E_exp``, in millimetres, batched ``(B, N, 3)``.

The asset (``assets/face_model.npz``) is built once by `build_ict_asset` (``mvf build-model``)
from the ICT Face Model Light and holds only the chosen face region, triangulated:

===================  =================  =================================================
key                  shape              meaning
===================  =================  =================================================
mean                 (N, 3) float32     neutral face, mm
id_basis             (K_id, N, 3)       identity modes, mm per unit coefficient (N(0,1) prior)
exp_basis            (K_exp, N, 3)      expression blendshapes, mm per unit weight ([0,1])
faces                (F, 3) int64       triangles, indices into the N vertices
landmarks            (68,) int64        iBUG-68 landmark vertex ids
contour_lines        (17, L) int64      per jawline landmark, candidate vertices (-1 = pad)
contour_substitutes  (2, 8) int64       publisher's contour substitutes, right (0-7), left (9-16)
verts_uvs            (T, 2) float32     UV coordinates
faces_uvs            (F, 3) int64       per-corner indices into verts_uvs
exp_names, id_names  str arrays
meta_json            str                source, region, units, licence, content hash
===================  =================  =================================================
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from mvf.errors import MvfError, file_error
from mvf.face.contour import build_contour_lines
from mvf.face.landmarks import LandmarkProjector, LandmarkSet, ibug68_set
from mvf.io.obj import read_polygons, read_vertices, triangulate

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ASSET = REPO_ROOT / "assets" / "face_model.npz"
ICT_TO_MM = 10.0  # ICT is in centimetres

# Vertex and polygon ranges (0-based, inclusive ends) of the ICT Face Model Light.
ICT_REGIONS = {
    "face": {"last_vertex": 9408, "last_polygon": 9229},
    "narrow": {"last_vertex": 6705, "last_polygon": 6559},
}
# Contour substitutes the publisher lists for jawline points 0-7 (subject's right) and 9-16.
ICT_CONTOUR_RIGHT = (1278, 1272, 12, 1834, 243, 781, 2199, 1447)
ICT_CONTOUR_LEFT = (3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496)
ICT_EXTRA_EXPRESSIONS = ("PupilDilate_L", "PupilDilate_R", "cheekRaiser_L", "cheekRaiser_R")

JAW_LANDMARKS = tuple(range(17))  # iBUG-68 jawline indices; 8 is the chin


# ----------------------------------------------------------------------------- source lookup
def find_ict_source(explicit: str | os.PathLike | None = None) -> Path:
    """Locate ICT data: ``explicit``, then ``$MVF_ICT_DIR``, then ``../shared/ict-facekit``.

    Accepts the shared data folder (with ``shapes.npz``), a raw ICT-FaceKit clone, or its
    ``FaceXModel/`` folder. Raises `MvfError` naming what was tried.
    """
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if explicit:
        candidates.append(("--ict", Path(explicit)))
    elif os.environ.get("MVF_ICT_DIR"):
        candidates.append(("$MVF_ICT_DIR", Path(os.environ["MVF_ICT_DIR"])))
    else:
        candidates.append(("default", REPO_ROOT.parent / "shared" / "ict-facekit"))
    for how, path in candidates:
        for cand in (path, path / "FaceXModel"):
            if (cand / "shapes.npz").is_file() or (cand / "generic_neutral_mesh.obj").is_file():
                if (cand / "vertex_indices.json").is_file():
                    return cand
        tried.append(f"{path} ({how})")
    raise MvfError(
        f"{tried[0].split(' (')[0]}: no ICT-FaceKit data there (need generic_neutral_mesh.obj, "
        "vertex_indices.json and shapes.npz or the FaceXModel OBJ files); pass --ict DIR or set MVF_ICT_DIR"
    )


# ----------------------------------------------------------------------------- asset building
def _load_ict_arrays(src: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Neutral (N,3), identity (100,N,3), expression (53,N,3) offsets in cm, plus names."""
    indices = json.loads((src / "vertex_indices.json").read_text())
    exp_names = list(indices["expressions"])
    if (src / "shapes.npz").is_file():
        try:
            z = np.load(src / "shapes.npz")
            neutral = z["neutral"].astype(np.float64)
            identity = z["identity"].astype(np.float64)
            all_exp = {str(n): z["expression"][i] for i, n in enumerate(z["expression_names"])}
            id_names = [str(n) for n in z["identity_names"]]
        except Exception as e:  # corrupt or foreign npz
            raise file_error(src / "shapes.npz", f"not a readable ICT shapes archive ({e})") from None
    else:  # raw FaceXModel folder of OBJ files
        neutral = read_vertices(src / "generic_neutral_mesh.obj")
        id_files = sorted(src.glob("identity[0-9][0-9][0-9].obj"))
        if not id_files:
            raise file_error(src, "no identityNNN.obj files in this ICT-FaceKit folder")
        id_names = [p.stem for p in id_files]
        identity = np.stack([read_vertices(p) - neutral for p in id_files])
        all_exp = {}
        for name in exp_names:
            p = src / f"{name}.obj"
            if not p.is_file():
                raise file_error(p, "expression shape missing from the ICT-FaceKit folder")
            all_exp[name] = read_vertices(p) - neutral
    missing = [n for n in exp_names if n not in all_exp]
    if missing:
        raise file_error(src, f"expressions missing: {missing[:3]}")
    expression = np.stack([all_exp[n] for n in exp_names])
    return neutral, identity, expression, id_names, exp_names


def _contour_lines(mean_mm: np.ndarray, landmarks: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Candidate vertex lines for the view-dependent jawline search, ``(17, L)`` (-1 padded).

    Built by `mvf.face.contour.build_contour_lines`: per jawline landmark, a dense line of vertices at
    its height on its side, ordered from the front of the face round to the back.
    """
    lines = build_contour_lines(torch.from_numpy(mean_mm), torch.from_numpy(faces), torch.from_numpy(landmarks))
    return lines.numpy().astype(np.int64)


def build_ict_asset(src: Path, out: Path, region: str = "face") -> dict:
    """Build the triangulated face-region asset in millimetres from ICT data at ``src``.

    Returns the asset's metadata. Writes ``out`` atomically.
    """
    if region not in ICT_REGIONS:
        raise MvfError(f"--region {region}: unknown region (choose from {sorted(ICT_REGIONS)})")
    last_v = ICT_REGIONS[region]["last_vertex"]
    last_p = ICT_REGIONS[region]["last_polygon"]
    obj = read_polygons(src / "generic_neutral_mesh.obj")
    neutral, identity, expression, id_names, exp_names = _load_ict_arrays(src)
    if neutral.shape[0] != obj.verts.shape[0]:
        raise file_error(src, "shapes and generic_neutral_mesh.obj disagree on the vertex count")
    faces, faces_uvs = triangulate(obj.poly_v[: last_p + 1], obj.poly_vt[: last_p + 1])
    if faces.max() > last_v:
        raise file_error(src, f"region {region}: polygons reference vertices beyond {last_v}")
    used_uv = np.unique(faces_uvs)
    uv_remap = np.full(obj.uvs.shape[0], -1, np.int64)
    uv_remap[used_uv] = np.arange(len(used_uv))
    indices = json.loads((src / "vertex_indices.json").read_text())
    landmarks = np.asarray(indices["idx_to_landmark_verts"], np.int64)
    if landmarks.shape != (68,) or landmarks.max() > last_v:
        raise file_error(src / "vertex_indices.json", "landmarks are not 68 ids inside the region")
    n = last_v + 1
    mean = (neutral[:n] * ICT_TO_MM).astype(np.float32)
    contour_sub = np.asarray([ICT_CONTOUR_RIGHT, ICT_CONTOUR_LEFT], np.int64)
    arrays = {
        "mean": mean,
        "id_basis": (identity[:, :n] * ICT_TO_MM).astype(np.float32),
        "exp_basis": (expression[:, :n] * ICT_TO_MM).astype(np.float32),
        "faces": faces,
        "landmarks": landmarks,
        "contour_lines": _contour_lines(mean, landmarks, faces),
        "contour_substitutes": contour_sub,
        "verts_uvs": obj.uvs[used_uv].astype(np.float32),
        "faces_uvs": uv_remap[faces_uvs],
        "id_names": np.asarray(id_names),
        "exp_names": np.asarray(exp_names),
    }
    digest = hashlib.sha256()
    for key in ("mean", "id_basis", "exp_basis", "faces", "landmarks", "contour_lines"):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    licence = (src / "LICENSE").read_text() if (src / "LICENSE").is_file() else ""
    meta = {
        "model": "ICT Face Model Light", "source": str(src.resolve()), "region": region,
        "units": "mm", "source_units": "cm", "scale": ICT_TO_MM, "n_vertices": n,
        "n_faces": int(faces.shape[0]), "n_id": int(identity.shape[0]),
        "n_exp": len(exp_names), "asset_id": digest.hexdigest()[:16], "licence": licence,
    }
    arrays["meta_json"] = np.asarray(json.dumps(meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, out)
    return meta


# ----------------------------------------------------------------------------- BFM09 (3DDFA format)
def load_bfm09(shape_mat: str | os.PathLike, exp_mat: str | os.PathLike | None = None) -> dict:
    """Read BFM09 in the 3DDFA ``.mat`` format that MVF-Net used, as asset arrays in mm.

    ``Model_Shape.mat`` holds ``w`` (3N, K) orthonormal shape PCA basis (xyz interleaved),
    ``mu_shape`` (3N, 1), ``sigma`` (K,) standard deviations, ``tri`` (3, F) 1-based
    triangles and ``keypoints`` (68,) 1-based vertex ids. ``Model_Expression.mat`` holds
    ``w_exp`` (3N, K_exp) and, when present, ``sigma_exp`` and ``mu_exp``.
    BFM09 coordinates are in **micrometres**: everything is divided by 1000 to give mm, and the
    bases are scaled by their sigmas so that coefficients have a unit-Gaussian prior.
    """
    from scipy.io import loadmat

    def read(path):
        try:
            return loadmat(str(path))
        except Exception as e:
            raise file_error(path, f"not a readable MATLAB file ({e})") from None

    sm = read(shape_mat)
    for key in ("w", "mu_shape", "tri", "keypoints"):
        if key not in sm:
            raise file_error(shape_mat, f"missing '{key}' (not a 3DDFA Model_Shape.mat)")
    um_to_mm = 1e-3
    mu = np.asarray(sm["mu_shape"], np.float64).reshape(-1)
    n = mu.shape[0] // 3
    w = np.asarray(sm["w"], np.float64)
    sigma = np.asarray(sm["sigma"], np.float64).reshape(-1) if "sigma" in sm else np.ones(w.shape[1])
    id_basis = (w * sigma[None]).T.reshape(-1, n, 3) * um_to_mm
    tri = np.asarray(sm["tri"], np.int64)
    faces = (tri.T if tri.shape[0] == 3 else tri) - 1
    keypoints = np.asarray(sm["keypoints"], np.int64).reshape(-1) - 1
    if keypoints.shape[0] == 3 * 68:  # flat xyz indices, as in some 3DDFA releases
        keypoints = keypoints[0::3] // 3
    mean = mu.reshape(n, 3)
    exp_basis = np.zeros((0, n, 3))
    if exp_mat is not None:
        em = read(exp_mat)
        if "w_exp" not in em:
            raise file_error(exp_mat, "missing 'w_exp' (not a 3DDFA Model_Expression.mat)")
        w_exp = np.asarray(em["w_exp"], np.float64)
        if w_exp.shape[0] != 3 * n:
            raise file_error(exp_mat, f"w_exp has {w_exp.shape[0]} rows, expected {3 * n}")
        s_exp = np.asarray(em["sigma_exp"], np.float64).reshape(-1) if "sigma_exp" in em else np.ones(w_exp.shape[1])
        exp_basis = (w_exp * s_exp[None]).T.reshape(-1, n, 3) * um_to_mm
        if "mu_exp" in em:
            mean = mean + np.asarray(em["mu_exp"], np.float64).reshape(n, 3)
    meta = {"model": "BFM09 (3DDFA format)", "source": str(shape_mat), "units": "mm",
            "source_units": "micrometre", "scale": um_to_mm, "region": "full",
            "n_vertices": n, "n_faces": int(faces.shape[0])}
    return {
        "mean": (mean * um_to_mm).astype(np.float32), "id_basis": id_basis.astype(np.float32),
        "exp_basis": exp_basis.astype(np.float32), "faces": faces, "landmarks": keypoints,
        "meta_json": np.asarray(json.dumps(meta)),
    }


# ----------------------------------------------------------------------------- the model
class FaceModel:
    """A linear 3DMM as plain tensors (no parameters to train). Move with `.to(device)`.

    Attributes:
        mean: ``(N, 3)`` mm. id_basis: ``(K_id, N, 3)``. exp_basis: ``(K_exp, N, 3)``.
        faces: ``(F, 3)`` long. landmarks: ``(68,)`` long vertex ids.
        contour_lines: ``(17, L)`` long, -1 padded (absent for BFM).
        verts_uvs ``(T, 2)``, faces_uvs ``(F, 3)`` (absent for BFM). meta: dict.
    """

    def __init__(self, arrays: dict, n_id: int | None = None, n_exp: int | None = None,
                 device: str | torch.device = "cpu"):
        def t(key, dtype):
            return torch.as_tensor(np.asarray(arrays[key]), dtype=dtype, device=device)

        self.meta: dict = json.loads(str(arrays["meta_json"])) if "meta_json" in arrays else {}
        self.mean = t("mean", torch.float32)
        id_basis = t("id_basis", torch.float32)
        exp_basis = t("exp_basis", torch.float32)
        if n_id is not None and not 0 <= n_id <= id_basis.shape[0]:
            raise MvfError(f"n_id={n_id}: the face model has {id_basis.shape[0]} identity modes")
        if n_exp is not None and not 0 <= n_exp <= exp_basis.shape[0]:
            raise MvfError(f"n_exp={n_exp}: the face model has {exp_basis.shape[0]} expressions")
        self.id_basis = id_basis[:n_id] if n_id is not None else id_basis
        self.exp_basis = exp_basis[:n_exp] if n_exp is not None else exp_basis
        self.faces = t("faces", torch.long)
        self.landmarks = t("landmarks", torch.long)
        self.contour_lines = t("contour_lines", torch.long) if "contour_lines" in arrays else None
        self.verts_uvs = t("verts_uvs", torch.float32) if "verts_uvs" in arrays else None
        self.faces_uvs = t("faces_uvs", torch.long) if "faces_uvs" in arrays else None
        self.exp_names = [str(s) for s in arrays["exp_names"]] if "exp_names" in arrays else []

    # -- construction
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, n_id: int | None = None,
             n_exp: int | None = None, device: str | torch.device = "cpu") -> "FaceModel":
        """Load an asset built by ``mvf build-model`` (default ``assets/face_model.npz``)."""
        path = Path(path) if path else DEFAULT_ASSET
        if not path.is_file():
            raise file_error(path, "face model asset not found; run `mvf build-model` (or `make setup`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise file_error(path, f"not a readable face model asset ({type(e).__name__})") from None
        missing = {"mean", "id_basis", "exp_basis", "faces", "landmarks"} - set(arrays)
        if missing:
            raise file_error(path, f"not a face model asset (missing {sorted(missing)})")
        return cls(arrays, n_id=n_id, n_exp=n_exp, device=device)

    def to(self, device: str | torch.device) -> "FaceModel":
        """Move every tensor to ``device`` (in place); returns self."""
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(device))
        return self

    # -- sizes
    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def n_verts(self) -> int:
        return self.mean.shape[0]

    @property
    def n_id(self) -> int:
        return self.id_basis.shape[0]

    @property
    def n_exp(self) -> int:
        return self.exp_basis.shape[0]

    @property
    def region(self) -> str:
        return self.meta.get("region", "unknown")

    @property
    def asset_id(self) -> str:
        return self.meta.get("asset_id", "unknown")

    # -- decoding
    def decode(self, id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor,
               vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``mean + id @ E_id + exp @ E_exp`` in mm.

        Args:
            id_coeffs: ``(B, k_id)`` with ``k_id <= n_id``; the first ``k_id`` modes are used.
            exp_coeffs: ``(B, k_exp)`` with ``k_exp <= n_exp``.
            vertex_ids: optional ``(M,)`` subset of vertices to decode (e.g. landmarks).
        Returns:
            ``(B, N, 3)`` (or ``(B, M, 3)``) vertices in mm; differentiable in the coefficients.
        """
        if id_coeffs.shape[-1] > self.n_id or exp_coeffs.shape[-1] > self.n_exp:
            raise MvfError(
                f"coefficients ({id_coeffs.shape[-1]} id, {exp_coeffs.shape[-1]} exp) exceed the "
                f"face model ({self.n_id} id, {self.n_exp} exp)")
        mean, eid, eexp = self.mean, self.id_basis, self.exp_basis
        if vertex_ids is not None:
            mean, eid, eexp = mean[vertex_ids], eid[:, vertex_ids], eexp[:, vertex_ids]
        k_id, k_exp = id_coeffs.shape[-1], exp_coeffs.shape[-1]
        batch = id_coeffs.shape[0]
        verts = mean.expand(batch, *mean.shape)
        if k_id:
            verts = verts + (id_coeffs @ eid[:k_id].reshape(k_id, -1)).reshape(batch, *mean.shape)
        if k_exp:
            verts = verts + (exp_coeffs @ eexp[:k_exp].reshape(k_exp, -1)).reshape(batch, *mean.shape)
        return verts

    def select(self, verts: torch.Tensor, vertex_ids: torch.Tensor | list[int]) -> torch.Tensor:
        """Index a vertex subset of decoded ``(..., N, 3)`` vertices: ``(..., M, 3)``."""
        ids = torch.as_tensor(vertex_ids, dtype=torch.long, device=verts.device)
        return verts.index_select(-2, ids)

    def landmarks_3d(self, verts: torch.Tensor) -> torch.Tensor:
        """The 68 landmark positions ``(..., 68, 3)`` of decoded vertices."""
        return self.select(verts, self.landmarks)

    # -- 2D landmarks
    def landmark_set(self, contour: bool = True, w_jaw: float = 1.0) -> LandmarkSet:
        """The iBUG-68 `LandmarkSet` (jawline on the silhouette with ``contour``; ``w_jaw``: the
        jawline's weight), see `mvf.face.landmarks.ibug68_set`."""
        return ibug68_set(self, contour=contour, w_jaw=w_jaw)

    def landmark_projector(self, lset: LandmarkSet | None = None, n_id: int | None = None) -> LandmarkProjector:
        """The projector of ``lset`` (default `landmark_set`); ``n_id`` identity modes for its
        compact `LandmarkProjector.decode` (default all)."""
        return LandmarkProjector(self, lset, n_id)

    def zero_coeffs(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero identity and expression coefficients ``(B, n_id)``, ``(B, n_exp)``."""
        return (torch.zeros(batch, self.n_id, device=self.device),
                torch.zeros(batch, self.n_exp, device=self.device))
