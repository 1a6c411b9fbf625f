"""The process pool that runs a sweep's cells on this machine when workers > 1 (the local backend).

`concurrent.futures.ProcessPoolExecutor` with the spawn start method; each worker runs torch with
`threads` threads and writes its cells' files itself (nvcim.sweep.cell_run.run_cell). A worker dies with
the sweep process (it would otherwise outlive the sweep's lock on DIR). When a worker dies (killed, out
of memory), the pool marks every unfinished cell broken: those cells run again in a fresh pool, and if
that breaks too, one at a time, each in a pool of its own, so only a cell that kills its own worker is
recorded as failed. Interrupted (Ctrl-C, SIGTERM), the sweep process terminates its workers at once (they ignore
SIGINT themselves, so that none starts another cell): the same command resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from nvcim.plugins import load_plugins
from nvcim.plugins import loaded as loaded_plugins
from nvcim.sweep.cell_run import cell_lines_enabled, record_failure, run_cell, set_cell_lines


def _exit_with_parent() -> None:
    """End this worker when the sweep process dies: Linux's parent-death signal, and a watchdog thread
    (any OS; also covers a parent that died before the signal was set, even while this worker was still
    importing: its pid is the one the sweep process recorded when it started the worker)."""
    parent = mp.parent_process().pid
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="nvcim-exit-with-parent", daemon=True).start()


def _pool_init(threads: int, plugin_specs: list[str], lines: bool = False) -> None:
    _exit_with_parent()
    set_cell_lines(lines)  # the parent's setting, for the worker's life
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the sweep process stops them
    torch.set_num_threads(threads)
    load_plugins(plugin_specs, env=False)  # a spawned worker starts bare: the parent's plugins again


def _pool_task(cell: dict, out: str, threads: int) -> dict:
    return run_cell(cell, out, threads)


def _pool_round(cells: Sequence, out: Path, on_done: Callable[[Mapping], None], *, workers: int, threads: int,
                task: Callable) -> list:
    """Run `cells` in one spawn-context pool; returns the cells left unfinished because the pool broke."""
    ctx = mp.get_context("spawn")
    broken = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init,
                                initargs=(threads, loaded_plugins(), cell_lines_enabled())) as pool:
        futures = {pool.submit(task, c.to_dict(), str(out), threads): c for c in cells}
        try:
            for fut in cf.as_completed(futures):
                cell = futures[fut]
                try:
                    summary = fut.result()
                except BrokenProcessPool:  # some worker died: this cell may or may not be the cause
                    broken.append(cell)
                    continue
                except Exception as exc:  # the cell could not be sent or its reply not read back
                    msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                    summary = record_failure(cell, out, threads, msg, traceback.format_exc())
                on_done(summary)
        except BaseException:  # Ctrl-C, SIGTERM: stop now, not after the running (hours-long) cells
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()  # their files are written atomically; training resumes from its last epoch
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    broken_ids = {c.id for c in broken}
    return [c for c in cells if c.id in broken_ids]  # in the given order


def _say(message: str) -> None:
    tqdm.write(f"nvcim sweep: {message}", file=sys.stderr)


def run_pool(cells: Sequence, out: Path, on_done: Callable[[Mapping], None], *, workers: int, threads: int,
             task: Callable | None = None) -> None:
    """Run `cells` in a spawn-context process pool of `workers` processes (see the module docstring
    for what happens when a worker dies). `task(cell_dict, out, threads) -> summary` defaults to run_cell."""
    task = task or _pool_task
    broken = _pool_round(cells, out, on_done, workers=workers, threads=threads, task=task)
    if broken and workers > 1:
        _say(f"warning: a worker process died; {len(broken)} unfinished cell(s) run again in a fresh pool")
        broken = _pool_round(broken, out, on_done, workers=workers, threads=threads, task=task)
        if broken:
            _say(f"warning: a worker process died again; {len(broken)} cell(s) run one at a time to find the cause")
    for cell in broken:
        if _pool_round([cell], out, on_done, workers=1, threads=threads, task=task):
            msg = ("its worker process died (killed, e.g. by the out-of-memory killer): "
                   "rerun with --retry-failed, with fewer --workers or a smaller cell")
            on_done(record_failure(cell, out, threads, msg, ""))
