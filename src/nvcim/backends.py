"""Where sweep cells run: a local process pool, or Ray (local instance or a cluster).

Both call `nvcim.sweep.run_cell`, which writes a cell's files and never raises for a failing cell,
so every backend produces the same layout and, with the same threads per cell, the same numbers.

* local, workers = 1: in the sweep's own process (nvcim.sweep.run_sweep).
* local, workers = N > 1: `concurrent.futures.ProcessPoolExecutor` with the spawn start method;
  each worker runs torch with `threads` threads (default: cores // N). Cells write their files
  themselves (same machine). A worker dies with the sweep process (it would otherwise outlive the
  sweep's lock on DIR). When a worker dies (killed, out of memory), the pool marks every unfinished
  cell broken: those cells run again in a fresh pool, and if that breaks too, one at a time, each in
  a pool of its own, so only a cell that kills its own worker is recorded as failed.
* ray: one `ray.remote` task per cell with `num_cpus = [resources] cpus_per_cell` and
  `num_gpus = [resources] gpus_per_cell` (default 1 when [train] device = "cuda", else 0); torch
  threads = threads_per_cell or cpus_per_cell. Without --address a local instance is started
  (`ray.init(num_cpus=...)`, no dashboard) and shut down at the end.
  Files: the driver drops a random token into DIR. A task that sees the token (DIR is on a shared
  file system, or the task runs on the driver's machine) writes the cell's files into DIR itself,
  so a killed β search resumes per candidate. A task that does not see it runs the cell in a local
  temporary directory and returns every file of the cell as bytes; the driver writes them beside
  the cell's directory and swaps them in at once. That works without a shared file system, at the cost of
  shipping checkpoints through Ray's object store and of per-β resume on the workers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

BACKENDS = ("local", "ray")
RAY_MISSING = "the ray backend needs Ray: pip install 'nvcim[ray]'"
TOKEN_FILE_NAME = ".sweep-token"  # = nvcim.sweep.TOKEN_FILE


# ---- process pool ----------------------------------------------------------------------------------
def _exit_with_parent() -> None:
    """End this worker when the sweep process dies: Linux's parent-death signal, and a watchdog thread
    (any OS; also covers a parent that died before the signal was set)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="nvcim-exit-with-parent", daemon=True).start()


def _pool_init(threads: int) -> None:
    import torch

    _exit_with_parent()
    torch.set_num_threads(threads)


def _pool_task(cell: dict, out: str, threads: int) -> dict:
    from nvcim.sweep import run_cell

    return run_cell(cell, out, threads)


def _failed_summary(cell, out: Path, threads: int, error: str, tb: str) -> dict:
    from nvcim.sweep import FAILED_FILE, _write_json, _version, cell_dir

    d = cell_dir(out, cell.id)
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / FAILED_FILE, {"kind": "sweep_cell_failed", "nvcim_version": _version(),
                                  "cell": {**cell.to_dict(), "threads": threads, "wall_time_s": None},
                                  "error": error, "traceback": tb})
    return {"id": cell.id, "status": "failed", "error": error, "wall_time_s": 0.0, "mean": None, "sigma": None,
            "beta": None}


def _pool_round(cells: Sequence, out: Path, on_done: Callable[[Mapping], None], *, workers: int, threads: int,
                task: Callable) -> list:
    """Run `cells` in one spawn-context pool; returns the cells left unfinished because the pool broke."""
    import concurrent.futures as cf
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    broken = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init,
                                initargs=(threads,)) as pool:
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
                    summary = _failed_summary(cell, out, threads, msg, traceback.format_exc())
                on_done(summary)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    broken_ids = {c.id for c in broken}
    return [c for c in cells if c.id in broken_ids]  # in the given order


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


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
            on_done(_failed_summary(cell, out, threads, msg, ""))


# ---- ray -------------------------------------------------------------------------------------------------
def _collect_files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _ray_cell(cell: dict, out: str, token: str, threads: int) -> dict:
    """Body of the Ray task (see the module docstring for where the files go)."""
    from nvcim.sweep import cell_dir, run_cell

    marker = Path(out) / TOKEN_FILE_NAME
    try:
        shared = marker.is_file() and marker.read_text(encoding="utf-8").strip() == token
    except OSError:
        shared = False
    if shared:
        return {"summary": run_cell(cell, out, threads), "files": None}
    tmp = tempfile.mkdtemp(prefix="nvcim-cell-")
    try:
        summary = run_cell(cell, tmp, threads)
        return {"summary": summary, "files": _collect_files(cell_dir(tmp, cell["id"]))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def _write_returned(out: Path, cell_id: str, files: Mapping[str, bytes]) -> None:
    """Put a cell's files returned by a remote task in place at once: written into a hidden folder beside
    the cell's directory, then swapped in, so a killed driver leaves the old directory or the new one."""
    from nvcim.fileio import atomic_write_bytes
    from nvcim.sweep import cell_dir

    d = cell_dir(out, cell_id)
    d.parent.mkdir(parents=True, exist_ok=True)
    for stale in d.parent.glob(f".{d.name}.tmp-*"):  # a write a kill interrupted
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.tmp-", dir=d.parent))
    try:
        for rel, data in files.items():
            atomic_write_bytes(tmp / rel, data)
        if d.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{d.name}.old-", dir=d.parent))
            os.rmdir(old)
            os.replace(d, old)
            os.replace(tmp, d)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, d)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_ray(cells: Sequence, out: Path, spec: Mapping, on_done: Callable[[Mapping], None], *, workers: int = 1,
            address: str | None = None, threads: int | None = None) -> None:
    """One Ray task per cell; results gathered as they finish."""
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_MISSING) from None

    res = spec["resources"]
    cpus, gpus = res["cpus_per_cell"], res["gpus_per_cell"]
    threads = threads or max(1, int(cpus))
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            n = int(workers * cpus) if workers > 1 else (os.cpu_count() or 1)
            ray.init(num_cpus=max(n, int(cpus)), include_dashboard=False, ignore_reinit_error=True,
                     log_to_driver=False)
        started = True
    token = secrets.token_hex(16)
    (Path(out) / TOKEN_FILE_NAME).write_text(token + "\n", encoding="utf-8")
    try:
        task = ray.remote(_ray_cell).options(num_cpus=cpus, num_gpus=gpus)
        pending: dict[Any, Any] = {task.remote(c.to_dict(), str(Path(out).resolve()), token, threads): c for c in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            cell = pending.pop(ref)
            try:
                reply = ray.get(ref)
                if reply["files"] is not None:
                    _write_returned(Path(out), cell.id, reply["files"])
                summary = reply["summary"]
            except Exception as exc:  # the task or its worker died
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                summary = _failed_summary(cell, Path(out), threads, msg, traceback.format_exc())
            on_done(summary)
    except BaseException:
        for ref in list(locals().get("pending", {})):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        raise
    finally:
        (Path(out) / TOKEN_FILE_NAME).unlink(missing_ok=True)
        if started:
            ray.shutdown()


__all__ = ["BACKENDS", "RAY_MISSING", "run_pool", "run_ray"]
