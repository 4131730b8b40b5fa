"""Progress of the training scripts: a bar on a terminal, nothing extra in a log.

The first ``make serve`` runs every training script in turn, and a step that
says nothing for half a minute looks hung. Each long loop (embedding batches,
epochs, backtest origins, evaluated texts) therefore draws a tqdm bar with its
count, rate and ETA when stderr is a terminal; ``disable=None`` turns the bar
off when it is not (CI, a pipe, a test's captured output), where the scripts'
own summary lines, with their durations, are the record.
"""

from __future__ import annotations

from tqdm import tqdm

__all__ = ["bar"]


def bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A progress bar of ``total`` units on stderr when it is a terminal, else a silent counter.

    Use as a context manager and ``update(n)`` after each chunk of work.
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)
