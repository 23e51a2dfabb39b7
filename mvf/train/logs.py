"""Metric logs: CSV files (one row per logged step) and TensorBoard scalars.

``train.csv`` and ``val.csv`` live in the run folder; TensorBoard events in ``<run>/tb``. On
resume, rows after the checkpoint's step are dropped (and a row cut short by a kill), so a
resumed run's CSV holds each step once and reads exactly as an uninterrupted one, and
TensorBoard gets ``purge_step`` (no stale events past the resume). A fresh run (``fresh=True``)
starts both CSVs and the TensorBoard events afresh instead of appending to a killed run's.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from mvf.fileio import write_bytes


class CsvLog:
    """Append-only CSV with a fixed header. Values missing from a row are left empty.

    ``fresh``: start the file anew (header only) even if it exists.
    """

    def __init__(self, path: Path, columns: list[str], fresh: bool = False):
        self.path = Path(path)
        self.columns = list(columns)
        if fresh or not self.path.is_file():
            write_bytes(self.path, (",".join(self.columns) + "\n").encode())

    def truncate_after(self, step: int) -> None:
        """Drop rows whose ``step`` is greater than ``step`` (atomically rewrites the file)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        # a row cut short by a kill has fewer fields (or a partial step number): dropped
        keep = [r for r in body if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= step]
        lines = [",".join(header)] + [",".join(r) for r in keep]
        write_bytes(self.path, ("\n".join(lines) + "\n").encode())
        self.columns = header if set(self.columns) <= set(header) else self.columns

    def write(self, row: dict) -> None:
        def fmt(v) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return ""
            if isinstance(v, float):
                return repr(v)
            return str(v)

        with open(self.path, "a") as fh:
            fh.write(",".join(fmt(row.get(c)) for c in self.columns) + "\n")


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV log as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class RunLogger:
    """CSV + optional TensorBoard for one run (use on rank 0 only)."""

    def __init__(self, out_dir: Path, train_columns: list[str], val_columns: list[str], tensorboard: bool,
                 purge_step: int | None = None, fresh: bool = False):
        """``purge_step``: the resumed step; TensorBoard then hides events logged after it.
        ``fresh``: a new run; CSVs and TensorBoard events of an earlier (killed) run are replaced."""
        self.train = CsvLog(out_dir / "train.csv", train_columns, fresh)
        self.val = CsvLog(out_dir / "val.csv", val_columns, fresh)
        self.tb = None
        if fresh:
            for old in (out_dir / "tb").glob("events.out.tfevents.*"):
                old.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge_step)

    def truncate_after(self, step: int) -> None:
        self.train.truncate_after(step)
        self.val.truncate_after(step)

    def log_train(self, step: int, row: dict) -> None:
        self.train.write({"step": step, **row})
        self._tb("train", step, row)

    def log_val(self, step: int, row: dict) -> None:
        self.val.write({"step": step, **row})
        self._tb("val", step, row)

    def _tb(self, prefix: str, step: int, row: dict) -> None:
        if self.tb is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
