"""Train/validation split by subject."""
from __future__ import annotations

import hashlib

from mvf.errors import MvfError


def split_subjects(subjects: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split subject names into ``(train, val)``, deterministically for a seed.

    Subjects are ranked by a hash of ``(seed, name)`` and the first ``round(val_fraction * n)``
    go to validation (at least one when ``val_fraction > 0`` and there are two or more
    subjects). The rank of a subject does not depend on the others, so growing a dataset moves
    few subjects between the sets. Both lists come back sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise MvfError(f"val_fraction {val_fraction}: must lie in [0, 1)")
    names = sorted(set(subjects))
    if len(names) != len(subjects):
        raise MvfError("split_subjects: duplicate subject names")
    n_val = round(val_fraction * len(names))
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    ranked = sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).digest())
    val = set(ranked[:n_val])
    return [s for s in names if s not in val], sorted(val)
