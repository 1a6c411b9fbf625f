"""The local backend: a sweep's cells on this machine, in the sweep's own process (workers = 1) or in a
process pool of `workers` processes (nvcim.sweep.backends.pool).

Every cell runs torch with [resources] threads_per_cell threads, by default the machine's cores // workers
(`default_threads`): CPU float results depend on the thread count, so an unfinished cell whose partial
work was made with another count is redone from scratch (run_cell removes nvcim's files of it), with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

from nvcim.sweep.backends.pool import run_pool
from nvcim.sweep.backends.registry import register_backend
from nvcim.sweep.cell_run import run_cell
from nvcim.sweep.cells import Cell
from nvcim.sweep.files import other_threads_warning
from nvcim.sweep.schema import SweepSpec


def default_threads(workers: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


@register_backend("local", help="in process (workers=1) or a process pool")
def run_local(cells: Sequence[Cell], out: Path, spec: SweepSpec, on_done: Callable[[Mapping], None],
              say: Callable[[str], None], *, workers: int = 1, address: str | None = None) -> None:
    """Run `cells` here, one at a time or `workers` at once (`address` is not used: cells run on this machine)."""
    threads = spec.resources.threads_per_cell or default_threads(workers)
    redo = other_threads_warning(out, cells, threads)
    if redo:
        say(redo)
    if workers == 1:
        for c in cells:
            on_done(run_cell(c, out, threads))
    else:
        run_pool(cells, out, on_done, workers=workers, threads=threads)
