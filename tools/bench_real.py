"""Accuracy of test-time fitting with the real detector in the loop, and on the scan-lps check case.

    .venv/bin/python tools/bench_real.py [--subjects 14] [--tune-subjects 40] [--sets tune test] [--sizes 224 512]
        [--landmarks calibrated ibug68] [--set key=value ...] [--skip-scan] [--json]
        [--checkpoint C [--front-checkpoint C1] [--no-fit]] [--camera-distance MM]

1. Synthetic triplets (`mvf synth`, default settings) at 224 and 512 px, a *tuning* set (seed
   1000, 40 subjects) and a *test* set (seed 2000, 14 subjects), generated under
   ``data/bench_real/`` the first time (a set with fewer subjects is extended).
   Mediapipe (`mvf.recon.detect.LandmarkDetector`) runs on the rendered images (cached per set in
   ``mediapipe478.npz``); the views are cropped like photos (`mvf.recon.views` / `mvf.recon.crop`) and
   fitted as `mvf reconstruct` fits (`mvf.recon.pipeline.fit_targets`, `mvf.recon.fit.fit`) with the
   calibrated mediapipe set (`mvf.recon.calibrate`) or the
   iBUG-68 table. Per set: mean-face RMSE, 3-view and front-only fit RMSE (mm, face region,
   rigid alignment, as training validation), detected-vs-true 68-point error (px in the images),
   seconds per fit. ``--exact-points`` fits the calibrated points projected from the true faces
   instead of the detections (the fit without the detector's error). ``--from-truth`` starts
   the 3-view fit at the true face and poses (mapped into the crops; all 100 identity modes with
   the calibrated set's default ``n_id``): where the fit's objective, not its start, puts the face
   (with ``--set landmark_steps=0``: the cross-view phase's own pull; ``--set photo_steps=0``: the
   landmark phase's).
   With ``--checkpoint`` (a network; ``model.geometry_input: detector`` networks read the detected
   points mapped into their crops, as `mvf reconstruct --checkpoint` feeds them) also the network
   paths: ``net`` the regression alone (3 views; network seconds per triplet), ``net_fit`` the
   regression followed by the fit (the network's prediction as the fit's start and prior centre),
   ``net_front`` the front view alone (the same network when its fusion takes any number of views,
   else ``--front-checkpoint``, a front-only ``fusion: mean`` model), ``net_fit_front`` that front-view
   regression followed by the fit on the front view (`mvf reconstruct --checkpoint` given one
   photo); ``--no-fit`` skips the fits
   from the mean face.
   ``--light-frame camera`` renders them with lights fixed to the camera (sets ``tune512_lcam`` ...):
   the shading changes from view to view, as when the head turns under a lamp or a flash.
   ``--camera-distance MM`` renders the sets with a pinhole camera MM from the face (``views.camera_distance_mm``
   of `mvf synth`; sets ``tune512_dMM`` ...): what the weak-perspective fit loses on photos taken from
   a finite distance.
2. Real scans: scan-lps (``../shared/samples/scan-lps``) and any case ``--scans`` names, laid out
   like it (``tools/render_scan.py`` renders one from a textured scan): ``mvf reconstruct`` (default
   settings plus ``--set``), ``mvf export --landmarks`` and ``mvf evaluate`` with both landmark
   files; RMSE mm, the mean face's, and the wall seconds of ``mvf reconstruct``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvf.align import aligned_rmse  # noqa: E402
from mvf.config import apply_override, load_config  # noqa: E402
from mvf.data.format import read_labels  # noqa: E402
from mvf.errors import MvfError  # noqa: E402
from mvf.face.landmarks import LandmarkProjector  # noqa: E402
from mvf.face.model import FaceModel  # noqa: E402
from mvf.fileio import read_image  # noqa: E402
from mvf.losses.supervised import face_region  # noqa: E402
from mvf.face.landmark_asset import load_landmark_set  # noqa: E402
from mvf.recon.crop import crop_image  # noqa: E402
from mvf.recon.detect import LandmarkDetector, landmarks_from_raw478  # noqa: E402
from mvf.recon.fit import FitConfig, fit  # noqa: E402
from mvf.net.checkpoint import load_model  # noqa: E402
from mvf.recon.pipeline import fit_targets, network_fit_config, network_points, predict_views  # noqa: E402
from mvf.recon.views import Views  # noqa: E402
from mvf.train.config import ValidationConfig  # noqa: E402
from renderer.views import VIEWS  # noqa: E402

SEEDS = {"tune": 1000, "test": 2000}
SCAN = ROOT.parent / "shared" / "samples" / "scan-lps"
CROP = 224


def ensure_set(path: Path, subjects: int, seed: int, size: int, camera_distance_mm: float = 0.0,
               light_frame: str = "model") -> None:
    """Generate a synthetic set with `mvf synth` unless it is complete (with a pinhole camera at
    ``camera_distance_mm`` when > 0, else weak perspective; lights fixed to ``light_frame``)."""
    index = path / "index.json"
    if index.is_file() and len(json.loads(index.read_text()).get("subjects", [])) >= subjects:
        return
    cmd = [sys.executable, "-m", "mvf", "synth", "--out", str(path), "--subjects", str(subjects),
           "--seed", str(seed), "--size", str(size), "--quiet"]
    if camera_distance_mm > 0:
        cmd += ["--set", f"views.camera_distance_mm=[{camera_distance_mm},{camera_distance_mm}]"]
    if light_frame != "model":
        cmd += ["--set", f"lighting.frame={light_frame}"]
    if subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode != 0:
        sys.exit(f"bench_real: `mvf synth` failed for {path}")


def subject_dirs(path: Path, subjects: int) -> list[Path]:
    names = json.loads((path / "index.json").read_text())["subjects"][:subjects]
    return [path / (n if isinstance(n, str) else n["name"]) for n in names]


def detections(path: Path, dirs: list[Path]) -> dict:
    """Mediapipe's 478 points per subject and view, cached in ``path/mediapipe478.npz``:
    ``raw`` ``(S, 3, 478, 3)`` (NaN where no face was found), ``seconds`` per image."""

    cache = path / "mediapipe478.npz"
    if cache.is_file():
        z = np.load(cache)
        if z["raw"].shape[0] >= len(dirs):
            return {"raw": z["raw"][: len(dirs)], "seconds": float(z["seconds"])}
    raw = np.full((len(dirs), 3, 478, 3), np.nan)
    t0 = time.perf_counter()
    with LandmarkDetector() as det:
        for i, d in enumerate(dirs):
            for v, name in enumerate(VIEWS):
                try:
                    raw[i, v] = det.detect_raw(read_image(d / f"{name}.png"))
                except MvfError:
                    pass
    seconds = (time.perf_counter() - t0) / (3 * len(dirs))
    np.savez(cache, raw=raw, seconds=seconds)
    return {"raw": raw, "seconds": seconds}


@dataclass
class Subject:
    """One prepared triplet: crops ``(3, 3, S, S)``, 68-point crop landmarks and visibility, the 478
    points in crop pixels, ground-truth vertices and true image-frame landmarks."""

    name: str
    crops: torch.Tensor
    lm68: torch.Tensor
    vis68: torch.Tensor
    raw: torch.Tensor
    gt: torch.Tensor
    det_err_px: float
    truth: dict  # the true {"id", "exp", "pose" (3, 6) crop px}, a fit's start for --from-truth


def prepare(model, d: Path, raw: np.ndarray, exact: LandmarkProjector | None = None) -> Subject | None:
    """Crop the views like `mvf.recon.views.detect_views` from cached detections ``raw``
    ``(3, 478, 3)``. With ``exact`` (the calibrated set's projector, ``--exact-points``) that set's
    points are first replaced by their projection from the true face and poses (per-yaw-bin
    embedding, contour search): the fit without the detector's error."""

    if not np.isfinite(raw).all():
        return None
    labels = read_labels(d / "labels.npz")
    gt = model.decode(torch.from_numpy(labels["id"])[None].float(), torch.from_numpy(labels["exp"])[None].float())
    if exact is not None:
        uv = exact.project(gt, torch.from_numpy(labels["pose"]).float()[None]).uv[0]
        raw = raw.copy()
        raw[:, exact.lset.source_index.numpy(), :2] = uv.numpy()
    crops, lm68, vis68, raws, errs, poses = [], [], [], [], [], []
    for v, name in enumerate(VIEWS):
        img = read_image(d / f"{name}.png")
        lm = landmarks_from_raw478(raw[v], img.shape[:2])
        cimg, tf = crop_image(img, lm.points, out_size=CROP)
        poses.append(tf.pose_to_crop(labels["pose"][v]))
        crops.append(torch.from_numpy(np.array(cimg)).permute(2, 0, 1).float() / 255.0)
        lm68.append(torch.from_numpy(np.asarray(tf.to_crop(lm.points), np.float32)))
        vis68.append(torch.from_numpy(lm.visible.astype(np.float32)))
        raws.append(torch.from_numpy(np.asarray(tf.to_crop(raw[v][:, :2]), np.float32)))
        tv = labels["landmark_visible"][v].astype(bool)
        errs.append(np.linalg.norm(lm.points - labels["landmarks"][v], axis=1)[tv])
    truth = {"id": torch.from_numpy(labels["id"]).float(), "exp": torch.from_numpy(labels["exp"]).float(),
             "pose": torch.from_numpy(np.stack(poses)).float()}
    return Subject(d.name, torch.stack(crops), torch.stack(lm68), torch.stack(vis68), torch.stack(raws), gt[0],
                   float(np.concatenate(errs).mean()), truth)


def subject_views(s: Subject, views: tuple[int, ...], with_points: bool = True) -> Views:
    """The views ``views`` of a subject as `mvf reconstruct` hands them on (crops, landmarks, points)."""
    idx = list(views)
    names = tuple(VIEWS[i] for i in idx)
    return Views(names, s.crops[idx], [], [], [], s.lm68[idx], s.vis68[idx], None, [], True,
                 s.raw[idx] if with_points else None)


def fit_subject(model, s: Subject, cfg, lset, views: tuple[int, ...], init: dict | None = None
                ) -> tuple[torch.Tensor, float]:
    """Fitted vertices ``(N, 3)`` of a subject from ``views`` (from ``init``, else the mean face)
    and the fit's seconds."""

    # the views as `mvf reconstruct` hands them to the fit (`mvf.recon.pipeline.fit_targets`)
    v = subject_views(s, views, lset is not None)
    t0 = time.perf_counter()
    targets, target_vis, used, fcfg = fit_targets(v, model, cfg)
    res = fit(model, v.crops, targets, target_vis, fcfg, init=init, landmark_set=used)
    secs = time.perf_counter() - t0
    with torch.no_grad():
        verts = model.decode(res.id[None], res.exp[None])[0]
    return verts, secs


def predict_subject(network, s: Subject, views: tuple[int, ...]) -> tuple[dict, torch.Tensor, float]:
    """The network's prediction (as `mvf reconstruct --checkpoint`), its vertices and seconds."""
    v = subject_views(s, views)
    t0 = time.perf_counter()
    init = predict_views(network, v.crops, v.names, network_points(v, network))
    secs = time.perf_counter() - t0
    with torch.no_grad():
        verts = network.face.decode(init["id"][None], init["exp"][None])[0]
    return init, verts, secs


def takes_any_views(network) -> bool:
    return network.net.cfg.fusion != "concat"


def run_set(model, subjects: list[Subject], cfg, lset, region, front_only: bool = True,
            network=None, front_network=None, mean_fit: bool = True, from_truth: bool = False) -> dict:
    """Per-subject RMSEs (mean face, 3 views, front only, network paths), detection error, seconds."""

    rows = {"mean_face": [], "three_views": [], "front_only": [], "det_px": [], "fit_s": [],
            "net": [], "net_s": [], "net_fit": [], "net_fit_s": [], "net_front": [],
            "net_fit_front": []}

    def rmse(verts):
        return float(aligned_rmse(verts[None], s.gt[None], region)[0])

    for s in subjects:
        rows["mean_face"].append(float(aligned_rmse(model.mean[None], s.gt[None], region)[0]))
        rows["det_px"].append(s.det_err_px)
        if mean_fit:
            v3, secs = fit_subject(model, s, cfg, lset, (0, 1, 2), init=s.truth if from_truth else None)
            rows["three_views"].append(rmse(v3))
            rows["fit_s"].append(secs)
            if front_only:
                v1, _ = fit_subject(model, s, cfg, lset, (0,))
                rows["front_only"].append(rmse(v1))
        if network is not None:
            init, vn, secs = predict_subject(network, s, (0, 1, 2))
            rows["net"].append(rmse(vn))
            rows["net_s"].append(secs)
            # the fit `mvf reconstruct --checkpoint` runs after the network (its default steps)
            vf, fsecs = fit_subject(model, s, network_fit_config(network, cfg, None), lset, (0, 1, 2), init=init)
            rows["net_fit"].append(rmse(vf))
            rows["net_fit_s"].append(secs + fsecs)
            front_net = network if takes_any_views(network) else front_network
            if front_net is not None:
                init1, v1n, _ = predict_subject(front_net, s, (0,))
                rows["net_front"].append(rmse(v1n))
                # `mvf reconstruct --checkpoint` given the front photo alone: its regression, then the fit
                front_cfg = network_fit_config(front_net, cfg, None)
                if front_cfg is not None:
                    v1f, _ = fit_subject(model, s, front_cfg, lset, (0,), init=init1)
                    rows["net_fit_front"].append(rmse(v1f))
    out = {k: float(np.mean(v)) for k, v in rows.items() if v}
    out["n"] = len(subjects)
    out["per_subject"] = rows
    return out


def scan_case(case: Path, extra: list[str], out_dir: Path | None = None, extra_args: list[str] | None = None,
              mean_face: bool = False) -> dict:
    """``mvf reconstruct`` on a scan case laid out like scan-lps (its README; `tools/render_scan.py`
    makes more), then export + evaluate. RMSE mm, wall s; with ``mean_face`` also the mean face's."""
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(out_dir) if out_dir else Path(tmp) / "rec"
        cmd = [sys.executable, "-m", "mvf", "reconstruct", "--front", str(case / "front.png"),
               "--left", str(case / "left.png"), "--right", str(case / "right.png"), "--out", str(rec),
               *(extra_args or [])]
        if extra:  # `mvf reconstruct` takes settings as a YAML file
            settings: dict = {}
            for kv in extra:  # dotted keys (cross_view.erode_px=0) become YAML sections
                apply_override(settings, kv)
            cfg_path = Path(tmp) / "fit.yaml"
            cfg_path.write_text(yaml.safe_dump(settings))
            cmd += ["--fit-config", str(cfg_path)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1:]}
        ev = evaluate_params(case, rec / "params.json", Path(tmp) / "eval", pred=rec / "mesh.obj")
        out = {"rmse_mm": ev.get("rmse_mm", ev.get("rmse")), "wall_s": wall, "evaluate": ev}
        if mean_face:
            zero = Path(tmp) / "zero.json"
            zero.write_text(json.dumps({"id": [], "exp": []}))
            out["mean_face_mm"] = evaluate_params(case, zero, Path(tmp) / "mean")["rmse_mm"]
    return out


def evaluate_params(case: Path, params: Path, work: Path, pred: Path | None = None) -> dict:
    """``mvf evaluate`` of ``pred`` (default: ``mvf export`` of ``params``) against the case's scan,
    with the landmarks ``mvf export --landmarks`` gives for ``params``."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "mvf", "export", "--params", str(params), "--out", str(work / "lm.obj"),
                    "--landmarks"], cwd=ROOT, capture_output=True, check=True)
    ej = work / "e.json"
    subprocess.run([sys.executable, "-m", "mvf", "evaluate", "--pred", str(pred or work / "lm.obj"),
                    "--gt", str(case / "gt.ply"), "--pred-landmarks", str(work / "lm_landmarks.txt"),
                    "--gt-landmarks", str(case / "gt_landmarks.txt"), "--json", str(ej)],
                   cwd=ROOT, capture_output=True, check=True)
    return json.loads(ej.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "bench_real"))
    ap.add_argument("--subjects", type=int, default=14, help="subjects of the test set")
    ap.add_argument("--tune-subjects", type=int, default=40,
                    help="subjects of the tuning set (14 proved too few to choose by: see README)")
    ap.add_argument("--sets", nargs="*", default=["tune", "test"], choices=list(SEEDS),
                    help="synthetic sets (none: the scan cases alone)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--landmarks", nargs="+", default=["calibrated"], choices=["calibrated", "ibug68"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FitConfig override")
    ap.add_argument("--no-front-only", action="store_true")
    ap.add_argument("--skip-scan", action="store_true")
    ap.add_argument("--checkpoint", help="also the network paths (regression, regression + fit, front only)")
    ap.add_argument("--front-checkpoint", help="front-only network (fusion: mean) for a concat --checkpoint")
    ap.add_argument("--no-fit", action="store_true", help="skip the fits from the mean face")
    ap.add_argument("--scan-args", default="", help="extra `mvf reconstruct` arguments for the scan cases")
    ap.add_argument("--scans", nargs="+", type=Path, default=[SCAN],
                    help="scan cases laid out like scan-lps (tools/render_scan.py), scored with their mean face")
    ap.add_argument("--exact-points", action="store_true",
                    help="fit the calibrated points projected from the true faces instead of mediapipe's")
    ap.add_argument("--from-truth", action="store_true",
                    help="start the 3-view fit at the true face and poses (the fit's n_id modes of them)")
    ap.add_argument("--camera-distance", type=float, default=0.0, metavar="MM",
                    help="render the sets with a pinhole camera this far from the face (sets *_dMM; "
                         "default 0: weak perspective, the model's camera)")
    ap.add_argument("--light-frame", choices=["model", "camera"], default="model",
                    help="render the sets with lights fixed to the head (default) or to the camera (sets "
                         "*_lcam: the shading changes between the views, as under a lamp or a flash)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)


    model = FaceModel.load()
    region = face_region(model, ValidationConfig().face_radius_mm)
    cfg = load_config(None, FitConfig, args.set)
    network = load_model(args.checkpoint) if args.checkpoint else None
    front_network = load_model(args.front_checkpoint) if args.front_checkpoint else None
    calibrated = load_landmark_set(None, model)  # read once: every set, size and --exact-points use it
    if calibrated is None and ("calibrated" in args.landmarks or args.exact_points):
        sys.exit("bench_real: no calibrated landmark set; run `mvf build-model --landmarks-only`")
    exact = LandmarkProjector(model, calibrated, model.n_id) if args.exact_points else None
    report: dict = {"settings": args.set, "sets": {}}
    for name in args.sets:
        for size in args.sizes:
            suffix = (f"_d{args.camera_distance:g}" if args.camera_distance > 0 else "") + \
                ("_lcam" if args.light_frame == "camera" else "")
            path = Path(args.data) / f"{name}{size}{suffix}"
            n_subjects = args.tune_subjects if name == "tune" else args.subjects
            ensure_set(path, n_subjects, SEEDS[name], size, args.camera_distance, args.light_frame)
            dirs = subject_dirs(path, n_subjects)
            det = detections(path, dirs)
            subjects = [s for s in (prepare(model, d, r, exact) for d, r in zip(dirs, det["raw"])) if s is not None]
            for lm_kind in args.landmarks:
                lset = calibrated if lm_kind == "calibrated" else None
                res = run_set(model, subjects, cfg, lset, region, not args.no_front_only, network,
                              front_network, not args.no_fit, args.from_truth)
                res["detect_s_per_image"] = det["seconds"]
                res["skipped"] = len(dirs) - len(subjects)
                report["sets"][f"{name}{size}{suffix}/{lm_kind}"] = res
    if not args.skip_scan:
        report["scans"] = {case.name: scan_case(case, args.set, extra_args=args.scan_args.split(), mean_face=True)
                           for case in args.scans}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    nan = float("nan")
    print(f"settings: {' '.join(args.set) or 'defaults'}")
    print("| set | landmarks | n | mean face mm | 3 views mm | front only mm | 3v vs mean | det px | fit s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, r in report["sets"].items():
        set_name, lm_kind = key.split("/")
        rel = 100.0 * (r.get("three_views", nan) / r["mean_face"] - 1.0)
        print(f"| {set_name} | {lm_kind} | {r['n']} | {r['mean_face']:.3f} | {r.get('three_views', nan):.3f} | "
              f"{r.get('front_only', nan):.3f} | {rel:+.1f}% | {r['det_px']:.2f} | {r.get('fit_s', nan):.2f} |")
    if network is not None:
        print("\n| set | net mm | net ms | net vs mean | net + fit mm | net + fit s | net front only mm "
              "| net + fit front only mm |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for key, r in report["sets"].items():
            print(f"| {key.split('/')[0]} | {r['net']:.3f} | {1000 * r['net_s']:.1f} | "
                  f"{100.0 * (r['net'] / r['mean_face'] - 1.0):+.1f}% | {r['net_fit']:.3f} | {r['net_fit_s']:.2f} | "
                  f"{r.get('net_front', nan):.3f} | {r.get('net_fit_front', nan):.3f} |")
    for name, sc in report.get("scans", {}).items():
        print(f"{name}: {sc.get('rmse_mm', sc.get('error'))} mm (mean face {sc.get('mean_face_mm')}), "
              f"mvf reconstruct {sc.get('wall_s', 0):.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
