"""A plain progress line for quiet training: ``--quiet`` hides the bar, not the progress.

Every ``every_s`` seconds (and at the end) rank 0 prints one line to stderr::

    train: step 340/1710 (geometry) 2.9 step/s, loss 0.4312, eta 7m52s
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; ``65`` -> ``1m05s``; ``4.2`` -> ``4s``."""
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class StatusLine:
    """Prints the training status at most every ``every_s`` seconds (``enabled=False``: never)."""

    def __init__(self, total: int, start_step: int, enabled: bool, every_s: float = 15.0,
                 stream: TextIO | None = None, clock=time.monotonic):
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.stream, self.clock = stream or sys.stderr, clock
        self.t0 = self.last = clock()
        self.start_step = start_step

    def update(self, step: int, stage: str, loss: float, force: bool = False) -> bool:
        """Print a line if ``every_s`` has passed since the last (or ``force``); True if printed."""
        now = self.clock()
        if not self.enabled or (not force and now - self.last < self.every_s):
            return False
        self.last = now
        rate = (step - self.start_step) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_text = format_duration(eta) if eta != float("inf") else "?"
        print(f"train: step {step}/{self.total} ({stage}) {rate:.2f} step/s, loss {loss:.4g}, eta {eta_text}",
              file=self.stream, flush=True)
        return True
