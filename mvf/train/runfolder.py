"""The run folder's life cycle around a training run (rank 0 only).

* checked and created before any work (`mvf.fileio.prepare_output_dir`);
* orphaned temporaries of atomic writes (``.<name>.<random>.tmp.<ext>``, left by a killed run)
  are removed at start;
* a run that fails before it wrote its first checkpoint is undone: the files and folders it
  created go, whatever was in the folder before stays (`RunFolder.undo`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from mvf.fileio import prepare_output_dir, remove_temporaries

SUBFOLDERS = ("tb", "pictures")  # folders a run writes into


class RunFolder:
    """A training run's output folder, with a record of what was there before this run."""

    def __init__(self, path: str | Path):
        """Check and create ``path``; `MvfError` naming it if that can't be done."""
        self.path = Path(path)
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.created = missing[-1] if missing else None  # the outermost folder this run creates
        prepare_output_dir(self.path)
        self.before = set(self._entries())

    def _entries(self) -> list[Path]:
        """Top-level entries and those of the run's subfolders."""
        out = list(self.path.iterdir())
        for sub in SUBFOLDERS:
            if (self.path / sub).is_dir():
                out += list((self.path / sub).iterdir())
        return out

    def remove_temporaries(self) -> list[Path]:
        """Delete orphaned temporary files of atomic writes; returns them."""
        gone = [p for folder in (self.path, *(self.path / s for s in SUBFOLDERS)) for p in remove_temporaries(folder)]
        self.before -= set(gone)
        return gone

    def undo(self) -> None:
        """Remove what this run created (entries absent before it started), and the folder
        itself (with the parents it created) when that leaves it empty."""
        if not self.path.is_dir():
            return
        for p in sorted(self._entries(), key=lambda q: len(q.parts), reverse=True):
            if p in self.before or not (p.exists() or p.is_symlink()):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if self.created is not None:
            folder = self.path
            while True:
                if not _remove_if_empty(folder) or folder == self.created:
                    break
                folder = folder.parent


def _remove_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
        return True
    except OSError:
        return False
