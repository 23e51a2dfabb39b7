"""2D facial landmarks: mediapipe detection mapped to iBUG-68, landmark files, yaw and view order.

Frames and units follow docs/conventions.md: points are ``(68, 2)`` float pixels, origin at the
image's top-left corner, u right, v down, pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``.
Mediapipe's normalised coordinates times the image size are *pixel-index* coordinates (pixel
``i`` centred at ``i``): detecting on an image up- or down-scaled by an integer ``k`` moves its
points by ``(k - 1) / 2`` px relative to ``k`` times the original (measured on the shared
triplet, k = 2, 3, 4, both directions, mirrored too). We therefore add `MEDIAPIPE_PIXEL_OFFSET`
(0.5 px) to u and v; ``tests/test_landmarks.py`` checks the scale consistency.

Detection uses mediapipe 0.10.21's legacy ``face_mesh`` solution in static-image mode with
refined landmarks (478 points); its models ship inside the wheel, nothing is downloaded.
`MEDIAPIPE_TO_IBUG68` picks one mediapipe point per iBUG-68 point (see its comments).

Landmark files given by the user take precedence over detection (`read_landmark_file`):

* ``.pts`` (iBUG/300-W): ``version: 1``, ``n_points: 68``, ``{``, 68 lines ``x y``, ``}``.
  Like menpo, we read them as **1-based** (the centre of the top-left pixel is (1, 1)), so
  mvf points are ``pts - 0.5``; `write_pts` adds the 0.5 back.
* ``.npy``: a ``(68, 2)`` or ``(68, 3)`` array already in the mvf image frame (a third
  column, e.g. depth or confidence, is dropped).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvf.errors import MvfError, file_error
from mvf.fileio import write_bytes

# Mediapipe's native graph (TFLite, absl, glog) logs INFO/W0000 lines to file descriptor 2 from its
# worker threads while it starts and runs; the variables quiet what honours them, and
# `quiet_native_stderr` silences the rest, so a command's stderr holds only mvf's own lines.
NATIVE_LOG_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}


@contextlib.contextmanager
def quiet_native_stderr():
    """Point file descriptor 2 at /dev/null while native code runs (Python exceptions still rise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)

N_IBUG = 68
N_MEDIAPIPE = 478
MEDIAPIPE_PIXEL_OFFSET = 0.5  # mediapipe x * W (pixel-index frame) + 0.5 = mvf image frame
MIN_LANDMARK_SPREAD_PX = 2.0  # landmark files whose points all lie closer together are refused

# iBUG-68 -> mediapipe face-mesh index, one per point. "Right"/"left" are the SUBJECT's sides
# (the subject's right is the image's left in a frontal photo). Chosen from mediapipe's mesh
# semantics (eye and lip contour rings, face oval, nose ridge), cross-checked against the public
# correspondence of PeizhiYan/Mediapipe_2_Dlib_Landmarks (same choice for brows, eyes, nose tip,
# lower nose and the outer lip peaks; we use single points, not averages) and verified on the
# shared triplet: after a 3D similarity fit of the face model's own iBUG-68 landmarks onto the
# front view's 478 points, the chosen points lie 2-6 px (at ~0.93 px/mm) from the model's
# brow/eye/nose/lip landmarks (up to 9 px at the smiling mouth corners), each being the nearest
# mediapipe point or its immediate neighbour. Jaw entries are the face-oval points nearest to the
# model's frontal jaw landmarks (left-right symmetric pairs); the drawn overlay confirms the order.
MEDIAPIPE_TO_IBUG68: tuple[int, ...] = (
    # jaw 0-16: face oval from the subject's right temple (eye level) via the chin (8) to the left
    162, 234, 93, 132, 172, 150, 149, 148, 152, 377, 378, 379, 397, 361, 323, 454, 389,
    # right brow 17-21 (outer -> inner), upper brow contour
    70, 63, 105, 66, 107,
    # left brow 22-26 (inner -> outer)
    336, 296, 334, 293, 300,
    # nose ridge 27-30 (between the eyes -> tip; 30 = pronasale)
    168, 197, 195, 4,
    # lower nose 31-35 (right alar base -> subnasale 33 -> left alar base)
    75, 97, 2, 326, 305,
    # right eye 36-41: outer corner, upper lid x2, inner corner, lower lid x2
    33, 160, 158, 133, 153, 144,
    # left eye 42-47: inner corner, upper lid x2, outer corner, lower lid x2
    362, 385, 387, 263, 373, 380,
    # outer lips 48-59: right corner, upper lip to the left corner (54), lower lip back
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lips 60-67: right corner, upper inner lip, left corner (64), lower inner lip
    78, 82, 13, 312, 308, 317, 14, 87,
)
assert len(MEDIAPIPE_TO_IBUG68) == N_IBUG

# Groups of the iBUG-68 scheme (index ranges).
IBUG_GROUPS: dict[str, range] = {
    "jaw": range(0, 17), "right_brow": range(17, 22), "left_brow": range(22, 27),
    "nose": range(27, 36), "right_eye": range(36, 42), "left_eye": range(42, 48),
    "mouth": range(48, 68),
}

# Yaw estimator constant: (nose-tip depth in front of the eye/mouth-corner midpoint) divided by
# the half distance between the two eye centres. Anthropometric faces give ~1.0 (nasal tip
# protrusion ~32 mm, eye centres ~64 mm apart); the mvf face model's mean gives 1.04.
NOSE_DEPTH_RATIO = 1.0


@dataclass
class Landmarks68:
    """iBUG-68 landmarks of one image.

    Attributes:
        points: ``(68, 2)`` float64 pixels in the image frame (see module docstring).
        visible: ``(68,)`` bool; False for points outside the image or (for detections)
            hidden behind nearer parts of the face (see `occlusion_mask`).
        yaw_deg: estimated head yaw in degrees (`estimate_yaw`); positive = nose towards
            the image's right.
        raw478: ``(478, 3)`` mediapipe points (u px, v px, depth px; smaller depth is nearer),
            or None when the landmarks came from a file.
        source: where they came from (``"mediapipe"`` or the file path).
    """

    points: np.ndarray
    visible: np.ndarray
    yaw_deg: float
    raw478: np.ndarray | None = None
    source: str = "mediapipe"


# ----------------------------------------------------------------------------- detection
class _DeferredModule(types.ModuleType):
    """A placeholder in ``sys.modules`` that imports the real module on first attribute use."""

    def __getattr__(self, attr: str):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        return getattr(real, attr)


def defer_import(name: str) -> None:
    """Make ``import name`` cheap until the module is used: a placeholder in ``sys.modules`` runs
    the real import on first attribute access (`importlib.util.LazyLoader` cannot: Python 3.11's
    import statement reads ``__spec__``, which loads it). Mediapipe imports ``matplotlib.pyplot``
    for drawing helpers mvf never calls: 0.5-1 s of every detection run. No-op when the module is
    loaded already or not installed."""
    if name in sys.modules:
        return
    top = name.partition(".")[0]  # finding a submodule's spec would import its package
    if importlib.util.find_spec(top) is None:
        return
    sys.modules[name] = _DeferredModule(name)


class LandmarkDetector:
    """A mediapipe face-mesh detector; create once, reuse for many images, then `close()`.

    Usable as a context manager. ``min_detection_confidence`` is mediapipe's face-detection
    threshold in [0, 1]. Mediapipe's native log lines are silenced (`quiet_native_stderr`).
    """

    def __init__(self, min_detection_confidence: float = 0.5):
        for key, value in NATIVE_LOG_ENV.items():
            os.environ.setdefault(key, value)
        defer_import("matplotlib.pyplot")
        with quiet_native_stderr():
            import absl.logging
            import mediapipe as mp

            absl.logging.set_verbosity(absl.logging.ERROR)
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, refine_landmarks=True, max_num_faces=1,
                min_detection_confidence=float(min_detection_confidence))

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release mediapipe's graph (idempotent)."""
        if self._mesh is not None:
            with quiet_native_stderr():
                self._mesh.close()
            self._mesh = None

    def detect_raw(self, image: np.ndarray, source: str | os.PathLike = "<image>") -> np.ndarray:
        """The 478 mediapipe points ``(478, 3)`` of the most prominent face: u, v in pixels in the
        mvf image frame (mediapipe's ``x * W + 0.5``, ``y * H + 0.5``), and mediapipe's relative
        depth ``z * W`` in pixels (smaller is nearer the camera).

        Raises `MvfError` ``"<source>: no face found"`` when there is none.
        """
        if self._mesh is None:
            raise RuntimeError("LandmarkDetector is closed")
        img = _check_image(image, source)
        with quiet_native_stderr():
            result = self._mesh.process(img)
        if not result.multi_face_landmarks:
            raise file_error(source, "no face found")
        lms = result.multi_face_landmarks[0].landmark
        h, w = img.shape[:2]
        off = MEDIAPIPE_PIXEL_OFFSET
        raw = np.array([[p.x * w + off, p.y * h + off, p.z * w] for p in lms], dtype=np.float64)
        if raw.shape[0] != N_MEDIAPIPE:
            raise RuntimeError(f"mediapipe returned {raw.shape[0]} points, expected {N_MEDIAPIPE}")
        return raw

    def detect(self, image: np.ndarray, source: str | os.PathLike = "<image>") -> Landmarks68:
        """Detect and map to iBUG-68. ``image``: ``(H, W, 3)`` uint8 RGB."""
        raw = self.detect_raw(image, source)
        return landmarks_from_raw478(raw, image.shape[:2])


def detect_landmarks(image: np.ndarray, source: str | os.PathLike = "<image>",
                     min_detection_confidence: float = 0.5) -> Landmarks68:
    """One-off detection (creates and closes a `LandmarkDetector`; reuse one for many images)."""
    with LandmarkDetector(min_detection_confidence) as det:
        return det.detect(image, source)


def landmarks_from_raw478(raw: np.ndarray, image_size: tuple[int, int]) -> Landmarks68:
    """Map mediapipe's ``(478, 3)`` points to `Landmarks68` for an image of ``(H, W)`` pixels."""
    raw = np.asarray(raw, dtype=np.float64)
    idx = np.asarray(MEDIAPIPE_TO_IBUG68)
    pts = raw[idx, :2].copy()
    visible = in_image(pts, image_size) & ~occlusion_mask(raw)
    return Landmarks68(points=pts, visible=visible, yaw_deg=estimate_yaw(pts), raw478=raw,
                       source="mediapipe")


def _check_image(image: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise file_error(source, f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img)


def in_image(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``(N,)`` bool: the ``(N, 2)`` pixel points lie inside an image of ``(H, W)``."""
    h, w = image_size
    p = np.asarray(points)
    return (p[:, 0] >= 0) & (p[:, 0] <= w) & (p[:, 1] >= 0) & (p[:, 1] <= h)


def occlusion_mask(raw: np.ndarray, hull_tol: float = 0.01, radius: float = 0.03,
                   depth_margin: float = 0.12) -> np.ndarray:
    """``(68,)`` bool: iBUG points (via `MEDIAPIPE_TO_IBUG68`) hidden in the image.

    Sizes are fractions of the face size, the diagonal of the 478 points' 2D bounding box.

    * Jawline (0-16): iBUG jaw points lie on the face's silhouette, so a mediapipe face-oval
      point counts as hidden when it is further than ``hull_tol`` from the boundary of the 2D
      convex hull of all 478 points (on the far side of a turned head the oval slips behind
      the cheek and nose).
    * Other points: a coarse point-splat z-test: hidden when another of the 478 points projects
      within ``radius`` of it and is nearer by more than ``depth_margin``.

    Args:
        raw: ``(478, 3)`` mediapipe points (u px, v px, depth px; smaller is nearer).
    """
    import cv2  # mediapipe's own dependency (already loaded with it); scipy.spatial costs 0.4 s more

    raw = np.asarray(raw, dtype=np.float64)
    uv = raw[:, :2]
    size = float(np.linalg.norm(uv.max(0) - uv.min(0)))
    idx = np.asarray(MEDIAPIPE_TO_IBUG68)
    sel = raw[idx]
    d2 = ((sel[:, None, :2] - uv[None]) ** 2).sum(-1)
    nearer = raw[None, :, 2] < sel[:, None, 2] - depth_margin * size
    hidden = ((d2 < (radius * size) ** 2) & nearer).any(1)

    hull = uv[cv2.convexHull(uv.astype(np.float32), returnPoints=False)[:, 0]]
    a, b = hull, np.roll(hull, -1, 0)
    jaw = sel[:17, None, :2]
    ab = (b - a)[None]
    t = np.clip(((jaw - a[None]) * ab).sum(-1) / (ab * ab).sum(-1).clip(1e-12), 0.0, 1.0)
    dist = np.linalg.norm(a[None] + t[..., None] * ab - jaw, axis=-1).min(1)
    hidden[:17] = dist > hull_tol * size
    return hidden


# ----------------------------------------------------------------------------- yaw
def estimate_yaw(points: np.ndarray) -> float:
    """Head yaw in degrees from 2D iBUG-68 points (positive = nose towards the image's right).

    Weak-perspective model of a symmetric face: after undoing the roll (the line through the
    eye centres), the nose tip (30) sits ``f d sin(yaw)`` to the side of the midpoint of the
    eye centres and mouth corners (48, 54), while the eye centres are ``2 f w cos(yaw)`` apart.
    Hence ``yaw = atan(offset / (half eye distance * NOSE_DEPTH_RATIO))`` with ``d / w`` =
    `NOSE_DEPTH_RATIO`. Only the eyes, mouth corners and nose tip are used (jawline points are
    view-dependent). Accurate to a few degrees on the face model for |yaw| <= 60 degrees.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.shape[0] != N_IBUG:
        raise ValueError(f"expected (68, 2) points, got {p.shape}")
    eye_r = p[36:42, :2].mean(0)
    eye_l = p[42:48, :2].mean(0)
    axis = eye_l - eye_r
    half = 0.5 * float(np.hypot(*axis))
    if half <= 1e-9:
        return 0.0
    ex = axis / (2.0 * half)  # unit vector along the eye line (image right in a frontal photo)
    mid = (eye_r + eye_l + p[48, :2] + p[54, :2]) / 4.0
    offset = float((p[30, :2] - mid) @ ex)
    return math.degrees(math.atan2(offset, half * NOSE_DEPTH_RATIO))


# ----------------------------------------------------------------------------- view order
# Expected yaw sign per slot (docs/conventions.md): `left` shows the subject's left cheek, the
# nose points to the image's left => negative yaw; `right` => positive yaw.
EXPECTED_SIGN = {"front": 0, "left": -1, "right": +1}


@dataclass
class ViewOrderCheck:
    """Result of `check_view_order`.

    Attributes:
        warnings: one line per problem found (empty when the order looks right).
        suggested: slot -> the given view whose image should fill it, e.g.
            ``{"front": "front", "left": "right", "right": "left"}`` for swapped side views;
            the identity mapping when no swap is suggested.
    """

    warnings: list[str]
    suggested: dict[str, str]

    @property
    def needs_swap(self) -> bool:
        return any(k != v for k, v in self.suggested.items())


def check_view_order(yaws: dict[str, float], min_side_yaw_deg: float = 10.0) -> ViewOrderCheck:
    """Check the yaw of each view against its slot and suggest a reassignment.

    Args:
        yaws: view name (``front``/``left``/``right``, any subset) -> estimated yaw in degrees.
        min_side_yaw_deg: a side view must turn at least this far the expected way.
    Returns:
        `ViewOrderCheck`. A slot is contradicted when ``left`` has yaw > +min, ``right`` has
        yaw < -min, or ``front``'s yaw is not between ``left``'s and ``right``'s. The suggested
        mapping sorts the given views by yaw (left = most negative, right = most positive,
        front in between) and is offered only when some slot is contradicted and, after the
        reassignment, the left view turns by at least ``min_side_yaw_deg`` to negative yaw and the
        right view as far to positive yaw.
    """
    unknown = set(yaws) - set(EXPECTED_SIGN)
    if unknown:
        raise MvfError(f"unknown view name(s) {sorted(unknown)}; expected front, left, right")

    def problems(assign: dict[str, float], strict: bool = False) -> list[str]:
        out = []
        left, right, front = assign.get("left"), assign.get("right"), assign.get("front")
        if left is not None and (left > min_side_yaw_deg or (strict and left > -min_side_yaw_deg)):
            out.append(f"left view has yaw {left:+.0f} deg: it shows the subject's right cheek "
                       "(a left view turns the nose towards the image's left, negative yaw)")
        if right is not None and (right < -min_side_yaw_deg or (strict and right < min_side_yaw_deg)):
            out.append(f"right view has yaw {right:+.0f} deg: it shows the subject's left cheek "
                       "(a right view turns the nose towards the image's right, positive yaw)")
        if front is not None and left is not None and front < left:
            out.append(f"front view has yaw {front:+.0f} deg, turned further to the image's left "
                       f"than the left view ({left:+.0f} deg)")
        if front is not None and right is not None and front > right:
            out.append(f"front view has yaw {front:+.0f} deg, turned further to the image's right "
                       f"than the right view ({right:+.0f} deg)")
        return out

    warnings = problems(yaws)
    identity = {k: k for k in yaws}
    if not warnings:
        return ViewOrderCheck([], identity)
    order = sorted(yaws, key=lambda k: yaws[k])  # most negative first
    slots = [s for s in ("left", "front", "right") if s in yaws]
    suggested = dict(zip(slots, order))
    if problems({slot: yaws[view] for slot, view in suggested.items()}, strict=True):
        return ViewOrderCheck(warnings, identity)
    moves = ", ".join(f"{v} -> {s}" for s, v in suggested.items() if s != v)
    if moves:
        warnings.append(f"suggested reassignment by yaw: {moves} (use --auto-order to apply)")
    return ViewOrderCheck(warnings, suggested)


# ----------------------------------------------------------------------------- files
def read_landmark_file(path: str | os.PathLike) -> np.ndarray:
    """Read 68 landmarks from a ``.pts`` or ``.npy`` file -> ``(68, 2)`` float64 pixels (mvf frame).

    Raises `MvfError` naming the file if it is missing, corrupt, of another format or does not
    hold exactly 68 finite points.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "landmark file not found")
    suffix = path.suffix.lower()
    if suffix == ".pts":
        pts = _parse_pts(path) - 0.5  # 1-based pixel centres -> mvf frame
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception:
            raise file_error(path, "not a readable .npy array") from None
        if arr.ndim != 2 or arr.shape[0] != N_IBUG or arr.shape[1] not in (2, 3):
            raise file_error(path, f"expected a (68, 2) or (68, 3) array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise file_error(path, f"expected numbers, got dtype {arr.dtype}")
        pts = arr[:, :2].astype(np.float64)
    else:
        raise file_error(path, f"unsupported landmark file type '{path.suffix}' (use .pts or .npy)")
    if not np.isfinite(pts).all():
        raise file_error(path, "landmarks contain NaN or infinite values")
    return pts


def read_face_landmarks(path: str | os.PathLike) -> np.ndarray:
    """`read_landmark_file` for a face to crop and fit: also refuses points that span less than
    `MIN_LANDMARK_SPREAD_PX` (no face, a crop of zero size)."""
    pts = read_landmark_file(path)
    if np.ptp(pts, axis=0).max() < MIN_LANDMARK_SPREAD_PX:
        raise file_error(path, f"landmarks are degenerate (all within {MIN_LANDMARK_SPREAD_PX:g} px of one point)")
    return pts


def _parse_pts(path: Path) -> np.ndarray:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        raise file_error(path, "not a readable text .pts file") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    n_declared = None
    try:
        start = lines.index("{")
        end = lines.index("}", start)
    except ValueError:
        raise file_error(path, "not an iBUG .pts file (missing '{' or '}')") from None
    for ln in lines[:start]:
        key, _, value = ln.partition(":")
        if key.strip().lower() == "n_points":
            try:
                n_declared = int(value)
            except ValueError:
                raise file_error(path, f"bad n_points line '{ln}'") from None
    rows = []
    for ln in lines[start + 1:end]:
        parts = ln.split()
        try:
            rows.append([float(parts[0]), float(parts[1])])
        except (ValueError, IndexError):
            raise file_error(path, f"bad point line '{ln}'") from None
    if n_declared is not None and n_declared != len(rows):
        raise file_error(path, f"n_points says {n_declared} but {len(rows)} points are listed")
    if len(rows) != N_IBUG:
        raise file_error(path, f"expected 68 landmarks, found {len(rows)}")
    return np.asarray(rows, dtype=np.float64)


def write_pts(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write ``(68, 2)`` mvf-frame points as an iBUG ``.pts`` file (1-based), atomically."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (N_IBUG, 2):
        raise ValueError(f"expected (68, 2) points, got {p.shape}")
    body = "\n".join(f"{x + 0.5:.4f} {y + 0.5:.4f}" for x, y in p)
    write_bytes(path, f"version: 1\nn_points: {N_IBUG}\n{{\n{body}\n}}\n".encode())


def load_or_detect(image: np.ndarray, image_path: str | os.PathLike,
                   landmark_file: str | os.PathLike | None = None,
                   detector: LandmarkDetector | None = None) -> Landmarks68:
    """Landmarks for one image: from ``landmark_file`` if given (it takes precedence), else detected.

    ``detector`` is required only when there is no landmark file.
    """
    if landmark_file is not None:
        pts = read_face_landmarks(landmark_file)
        return Landmarks68(points=pts, visible=in_image(pts, image.shape[:2]),
                           yaw_deg=estimate_yaw(pts), raw478=None, source=str(landmark_file))
    if detector is None:
        raise ValueError("no landmark file and no detector")
    return detector.detect(image, image_path)
