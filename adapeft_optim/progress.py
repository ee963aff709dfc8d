"""Progress of a training phase (the demo's, ``adapeft select``'s probe phase): a tqdm bar on a
terminal, whole lines in logs and pipes (:class:`LineProgress`), or nothing."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["LineProgress", "NoBar", "Progress", "progress_bar"]

# What the ``progress`` argument of train/probe/pretrain takes: a description for a tqdm bar, a
# factory ``total -> bar`` (e.g. ``functools.partial(LineProgress, desc=...)``), or None.
Progress = str | Callable[[int], Any] | None


def progress_bar(total: int, desc: Progress):
    """A tqdm bar for a description, the factory's bar, or a no-op stand-in for None."""
    if desc is None:
        return NoBar()
    if callable(desc):
        return desc(total)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


class LineProgress:
    """Progress as whole lines, for logs and pipes where a tqdm bar would be one long line
    of carriage returns: the first step (so the speed shows early), every tenth of the steps
    and the last, e.g. ``  warm-up (probes): 4/8 steps, loss 3.214 (1.9s)``.

    Args:
        total (int): steps of the phase.
        desc (str): name of the phase.
        stream (TextIO, optional): where the lines go (default: sys.stdout)
        every (float): fraction of the steps between lines (default: 0.1)
    """

    def __init__(self, total: int, desc: str, stream: TextIO | None = None, every: float = 0.1) -> None:
        self.total, self.desc, self.stream = total, desc, stream
        self.every = max(1, math.ceil(every * total))
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n == 1 or self.n >= self.total or self.n // self.every > before // self.every:
            elapsed = time.perf_counter() - self.start
            print(
                f"  {self.desc}: {self.n}/{self.total} steps{self.postfix} ({elapsed:.1f}s)",
                file=self.stream or sys.stdout,
                flush=True,
            )

    def close(self) -> None:
        pass


class NoBar:
    """A progress bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
