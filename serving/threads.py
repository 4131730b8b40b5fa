"""Compute threads of a forked process (a Gunicorn worker or a job process).

Set after fork, never before: OpenMP state made in the parent hangs forked
children. ``threads`` x processes should not exceed the cores.
"""

from __future__ import annotations

import os
import sys

_threads: int | None = None


def set_compute_threads(threads: int) -> None:
    """Torch intra-op threads (one inter-op thread), OpenCV threads and the
    count XGBoost and LightGBM predict with (``compute_threads``), for the
    libraries this process has loaded; imports neither."""
    global _threads
    _threads = threads
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # fixed already by an earlier parallel call
            pass
    if "cv2" in sys.modules:
        import cv2

        cv2.setNumThreads(threads)


def compute_threads() -> int:
    """The compute threads of this process: what ``set_compute_threads`` set,
    else every core (a shell, a test). Libraries that take a thread count per
    call (XGBoost, LightGBM) read it here."""
    return _threads or os.cpu_count() or 1
