"""Progress of the long steps: a tqdm bar in an interactive run; without one (papermill, CI, `dvc repro`) one
summary line per step, so a stage's log says what ran and for how long. `nbrun` scrubs the time from
executed notebooks (`SUMMARY`), which stay byte-identical between runs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from tqdm import tqdm

SUMMARY = re.compile(r"^(\[done\] [^\n]*) in \d+ s$", re.M)
"""A summary line; its time is dropped from executed notebooks."""


class Summary:
    """tqdm's counting interface without a bar: on close (or at the end of its iterable) prints
    `[done] <desc>: <n> <unit> in <seconds> s`."""

    def __init__(self, iterable: Iterable | None, desc: str, unit: str, initial: int):
        self.iterable, self.desc, self.unit, self.n = iterable, desc, unit, initial
        self.start, self.closed = time.perf_counter(), False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            print(f"[done] {self.desc}: {self.n} {self.unit} in {time.perf_counter() - self.start:.0f} s", flush=True)


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, progress: bool = False,
        rank: int = 0, unit: str = "it", initial: int = 0, leave: bool = False):
    """A tqdm bar when `progress`, else a `Summary`; nothing on processes other than rank 0."""
    if progress or rank != 0:
        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave,
                    disable=rank != 0)
    return Summary(iterable, desc, unit, initial)
