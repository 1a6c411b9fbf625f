"""The Ray backend: one `ray.remote` task per cell, on a local Ray instance or a cluster (--address).

Each task asks for `num_cpus = [resources] cpus_per_cell` and `num_gpus = [resources] gpus_per_cell`
(default 1 when [train] device = "cuda", else 0) and runs torch with threads_per_cell threads, default
cpus_per_cell. Without an address a local instance is started (`ray.init(num_cpus=...)`, no dashboard)
and shut down at the end. Ray is optional (`pip install 'nvcim[ray]'`): it is imported when a sweep uses it.

Files: the driver drops a random token into DIR. A task that sees the token (DIR is on a shared file
system, or the task runs on the driver's machine) writes the cell's files into DIR itself, so a killed
β search resumes per candidate. A task that does not see it runs the cell in a local temporary
directory and returns every file of the cell as bytes; the driver removes nvcim's files of an earlier
attempt from the cell's directory (keeping any other) and writes them, the outcome last. That works
without a shared file system, at the cost of shipping checkpoints through Ray's object store and of
per-β resume on the workers.
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nvcim.io.files import atomic_write_bytes
from nvcim.plugins import load_plugins
from nvcim.plugins import loaded as loaded_plugins
from nvcim.sweep.backends.registry import register_backend
from nvcim.sweep.cell_run import record_failure, run_cell
from nvcim.sweep.files import (FAILED_FILE, RESULT_FILE, TOKEN_FILE, cell_dir, foreign_token, other_threads_warning,
                               remove_cell_files, swap_leftovers)
from nvcim.sweep.schema import SweepSpec

RAY_MISSING = "the ray backend needs Ray: pip install 'nvcim[ray]'"


def _collect_files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _ray_cell(cell: dict, out: str, token: str, threads: int, plugin_specs: tuple[str, ...] = ()) -> dict:
    """Body of the Ray task (see the module docstring for where the files go). The driver's plugins are
    imported first (their files or modules must exist where the task runs)."""
    load_plugins(plugin_specs, env=False)
    marker = Path(out) / TOKEN_FILE
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
    """Put a cell's files returned by a remote task in place: nvcim's files of an earlier attempt there are
    removed first (any other file stays), then each file is written atomically, the outcome (result.json or
    failed.json) last, so a driver killed midway leaves a pending cell, never a false 'done'."""
    d = cell_dir(out, cell_id)
    d.parent.mkdir(parents=True, exist_ok=True)
    for stale in swap_leftovers(d, "tmp"):  # an earlier version's interrupted write: nvcim's names only
        shutil.rmtree(stale, ignore_errors=True)
    for old in swap_leftovers(d, "old"):  # an earlier version's swap a kill interrupted
        if not d.exists():
            os.replace(old, d)  # the cell's previous directory, user's files included, back in place
        elif old.is_dir():
            remove_cell_files(old)  # what is left there is not nvcim's and stays
    if d.is_dir():
        remove_cell_files(d)
    outcome = (RESULT_FILE, FAILED_FILE)
    for rel in sorted(files, key=lambda rel: rel in outcome):
        atomic_write_bytes(d / rel, files[rel])


def ray_threads(spec: SweepSpec) -> int:
    """Torch threads of a cell's Ray task: [resources] threads_per_cell, else its cpus_per_cell."""
    return spec.resources.threads_per_cell or max(1, int(spec.resources.cpus_per_cell))


def _ray_importable() -> None:
    if importlib.util.find_spec("ray") is None:
        raise ValueError(RAY_MISSING)


@register_backend("ray", help="one Ray task per cell", remote=True, check=_ray_importable)
def run_ray(cells: Sequence, out: Path, spec: SweepSpec, on_done: Callable[[Mapping], None],
            say: Callable[[str], None] | None = None, *, workers: int = 1, address: str | None = None) -> None:
    """One Ray task per cell; results gathered as they finish (`say`: partial work redone, as the local backend)."""
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_MISSING) from None

    res = spec.resources
    cpus, gpus = res.cpus_per_cell, res.gpus_per_cell
    threads = ray_threads(spec)
    redo = other_threads_warning(Path(out), cells, threads)
    if redo and say is not None:
        say(redo)  # as the local backend says it
    token = _write_token(Path(out))  # before Ray starts: a user's file of that name stops the run here
    started = False
    try:
        if not ray.is_initialized():
            if address:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            else:
                n = int(workers * cpus)  # --workers cells at once, as the local pool (1 by default)
                ray.init(num_cpus=max(n, math.ceil(cpus)), include_dashboard=False, ignore_reinit_error=True,
                         log_to_driver=False)
            started = True
        task = ray.remote(_ray_cell).options(num_cpus=cpus, num_gpus=gpus)
        pending: dict[Any, Any] = {task.remote(c.to_dict(), str(Path(out).resolve()), token, threads,
                                                          tuple(loaded_plugins())): c for c in cells}
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
                summary = record_failure(cell, Path(out), threads, msg, traceback.format_exc())
            on_done(summary)
    except BaseException:
        for ref in list(locals().get("pending", {})):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        raise
    finally:
        _remove_token(Path(out), token)
        if started:
            ray.shutdown()


def _write_token(out: Path) -> str:
    """A fresh token in DIR/.sweep-token (created, never following a link); a token a killed run left is replaced,
    any other file of that name is the user's: a one-line ValueError (run_sweep checks it before writing anything)."""
    path = out / TOKEN_FILE
    if foreign_token(out) is not None:
        raise ValueError(f"sweep output {out}: {path} is not nvcim's token file, and the ray backend would replace "
                         "it: move it away or choose another --out")
    path.unlink(missing_ok=True)  # a killed run's
    token = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def _remove_token(out: Path, token: str) -> None:
    """Remove DIR/.sweep-token if it is still this run's."""
    path = out / TOKEN_FILE
    try:
        if path.is_file() and not path.is_symlink() and path.read_text(encoding="utf-8") == token + "\n":
            path.unlink()
    except (OSError, UnicodeDecodeError):
        pass
