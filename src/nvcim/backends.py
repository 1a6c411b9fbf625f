"""Where sweep cells run: a local process pool, or Ray (local instance or a cluster).

Both call `nvcim.sweep.run_cell`, which writes a cell's files and never raises for a failing cell,
so every backend produces the same layout and, with the same threads per cell, the same numbers.

* local, workers = 1: in the sweep's own process (nvcim.sweep.run_sweep).
* local, workers = N > 1: `concurrent.futures.ProcessPoolExecutor` with the spawn start method;
  each worker runs torch with `threads` threads (default: cores // N). Cells write their files
  themselves (same machine).
* ray: one `ray.remote` task per cell with `num_cpus = [resources] cpus_per_cell` and
  `num_gpus = [resources] gpus_per_cell` (default 1 when [train] device = "cuda", else 0); torch
  threads = threads_per_cell or cpus_per_cell. Without --address a local instance is started
  (`ray.init(num_cpus=...)`, no dashboard) and shut down at the end.
  Files: the driver drops a random token into DIR. A task that sees the token (DIR is on a shared
  file system, or the task runs on the driver's machine) writes the cell's files into DIR itself,
  so a killed β search resumes per candidate. A task that does not see it runs the cell in a local
  temporary directory and returns every file of the cell as bytes; the driver writes them into
  DIR (result.json / failed.json last). That works without a shared file system, at the cost of
  shipping checkpoints through Ray's object store and of per-β resume on the workers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

BACKENDS = ("local", "ray")
RAY_MISSING = "the ray backend needs Ray: pip install 'nvcim[ray]'"
TOKEN_FILE_NAME = ".sweep-token"  # = nvcim.sweep.TOKEN_FILE


# ---- process pool ----------------------------------------------------------------------------------
def _pool_init(threads: int) -> None:
    import torch

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


def run_pool(cells: Sequence, out: Path, on_done: Callable[[Mapping], None], *, workers: int, threads: int) -> None:
    """Run `cells` in a spawn-context process pool of `workers` processes."""
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(_pool_task, c.to_dict(), str(out), threads): c for c in cells}
        try:
            for fut in cf.as_completed(futures):
                cell = futures[fut]
                try:
                    summary = fut.result()
                except Exception as exc:  # the worker process died (BrokenProcessPool, ...)
                    msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                    summary = _failed_summary(cell, out, threads, msg, traceback.format_exc())
                on_done(summary)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


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
    """Write a cell's files returned by a remote task: everything first, the marker file last."""
    from nvcim.sweep import FAILED_FILE, RESULT_FILE, cell_dir

    d = cell_dir(out, cell_id)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    last = [k for k in files if k in (RESULT_FILE, FAILED_FILE)]
    for rel in [k for k in files if k not in last] + last:
        dest = d / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(files[rel])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)


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
