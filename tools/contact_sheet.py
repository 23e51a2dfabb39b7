"""Contact sheet of a synthetic (or unlabelled triplet) dataset: one front/left/right strip per subject.

    .venv/bin/python tools/contact_sheet.py DIR --out sheet.png [--n 24] [--cols 3] [--tile 112]
                                            [--landmarks]

With ``--landmarks`` the labelled 2D landmarks are drawn: green visible, red hidden, yellow the
jawline points that sit on the silhouette.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvf.errors import MvfError  # noqa: E402
from renderer.views import VIEWS  # noqa: E402


def subject_dirs(root: Path) -> list[Path]:
    """Subject folders: from index.json when there is one, else every folder with view images."""
    from mvf.data.format import is_synth_dataset, read_index

    if is_synth_dataset(root):
        return [root / s for s in read_index(root)["subjects"]]
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("front.*")))


def strip(folder: Path, tile: int, landmarks: bool) -> np.ndarray:
    """``(tile, 3 * tile, 3)`` uint8: the three views side by side, optionally annotated."""
    from PIL import Image, ImageDraw

    from mvf.data.format import LABELS_NAME, read_labels
    from mvf.fileio import find_view_image, read_image

    labels = read_labels(folder / LABELS_NAME) if landmarks and (folder / LABELS_NAME).is_file() else None
    out = []
    for v, view in enumerate(VIEWS):
        img = read_image(find_view_image(folder, view))
        scale = tile / img.shape[1]
        pil = Image.fromarray(img).resize((tile, tile), Image.BILINEAR)
        if labels is not None:
            draw = ImageDraw.Draw(pil)
            sil = labels.get("jaw_on_silhouette", np.zeros((3, 17), bool))
            for k, (x, y) in enumerate(labels["landmarks"][v] * scale):
                if k < 17 and sil[v, k]:
                    col = (255, 220, 0)
                else:
                    col = (0, 230, 0) if labels["landmark_visible"][v, k] else (255, 40, 40)
                draw.ellipse([x - 1.2, y - 1.2, x + 1.2, y + 1.2], fill=col)
        out.append(np.asarray(pil))
    return np.concatenate(out, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="dataset folder")
    ap.add_argument("--out", type=Path, required=True, help="output PNG")
    ap.add_argument("--n", type=int, default=24, help="subjects to show (default 24)")
    ap.add_argument("--cols", type=int, default=3, help="strips per row (default 3)")
    ap.add_argument("--tile", type=int, default=112, help="pixels per view (default 112)")
    ap.add_argument("--landmarks", action="store_true", help="draw the labelled landmarks")
    args = ap.parse_args(argv)
    try:
        from mvf.fileio import write_image

        dirs = subject_dirs(args.root)[: args.n]
        if not dirs:
            raise MvfError(f"{args.root}: no subjects found")
        strips = [strip(d, args.tile, args.landmarks) for d in dirs]
        blank = np.zeros_like(strips[0])
        while len(strips) % args.cols:
            strips.append(blank)
        gap = np.full((strips[0].shape[0], 4, 3), 255, np.uint8)
        rows = [np.concatenate([x for s in strips[r:r + args.cols] for x in (s, gap)][:-1], 1)
                for r in range(0, len(strips), args.cols)]
        hgap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
        sheet = np.concatenate([x for r in rows for x in (r, hgap)][:-1], 0)
        write_image(args.out, sheet)
    except MvfError as e:
        print(f"contact_sheet: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(dirs)} subjects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
