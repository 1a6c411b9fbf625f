"""Running a sweep: the directory checks, the plan (which cells run), the lock, and handing cells to a backend.

    summary = run_sweep(spec, "runs/cpu", backend="local", workers=2)   # SweepSummary; exit_code 0 or 1
    cells, todo, done, failed = plan(spec, "runs/cpu")                 # what a run would do (--dry-run)

Before anything is written, DIR (another spec's? finished cells of another definition?) and the data
sets of the cells to run are checked; then, under an exclusive lock on DIR, spec.json is recorded and
the pending cells go to the backend named `backend` (nvcim.sweep.backends: looked up in its registry),
which reports each finished cell through `on_done`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from nvcim.data import check_dataset
from nvcim.evaluate import write_results_json
from nvcim.io.files import atomic_write_text, check_output_path
from nvcim.sweep.cell_run import cell_lines
from nvcim.sweep.backends.registry import get_backend
from nvcim.sweep.cells import Cell, expand, is_int
from nvcim.sweep.eta import Eta
from nvcim.sweep.files import (CELL_FILE, COPY_HEADER, LOCK_FILE, SPEC_JSON, adopt_plugin_change, cell_dir,
                               cell_state, check_cell_paths, foreign_token, cell_differences, failed_differences,
                               result_problem)
from nvcim.sweep.schema import SweepSpec


class SweepWarning(UserWarning):
    """What run_sweep warns about (always, quiet or not): damaged or distrusted files it does not reuse,
    results it records but that need a look (non-finite logits, a mean below chance)."""


warnings.simplefilter("always", SweepWarning, append=True)  # every time, not once per text (the user's filters first)


def _api_warn(message: str) -> None:
    warnings.warn(message, SweepWarning, stacklevel=2)


# the keys of the spec.json nvcim writes (SweepSpec.to_dict): always / only some
_SPEC_RECORD_KEYS = ("name", "models", "width", "datasets", "methods", "sigmas", "seeds", "betas", "method_params",
                     "train", "eval", "resources", "variants")
_SPEC_RECORD_OPTIONAL = ("description", "device_models")


def is_spec_record(obj) -> bool:
    """Whether `obj` (a parsed spec.json) has the form of the spec record nvcim writes (SweepSpec.to_dict, this
    version's or an earlier one's): a sweep may replace only such a file (--force)."""
    if not isinstance(obj, dict) or not set(_SPEC_RECORD_KEYS) <= set(obj):
        return False
    if set(obj) - set(_SPEC_RECORD_KEYS) - set(_SPEC_RECORD_OPTIONAL):
        return False
    lists = ("models", "datasets", "methods", "sigmas", "seeds", "variants")
    maps = ("method_params", "train", "eval", "resources")
    return (isinstance(obj["name"], str) and all(isinstance(obj[k], list) for k in lists)
            and all(isinstance(obj[k], dict) for k in maps) and (obj["betas"] is None or isinstance(obj["betas"], list)))


_UNORDERED = ("models", "datasets", "methods", "seeds")  # axes whose order sets only the order cells run in


def _canonical(spec: Mapping) -> str:
    """The spec as compared with a directory's: its axes' order aside (seeds [2, 0, 1] is the grid of [0, 1, 2])."""
    spec = {k: sorted(v, key=str) if k in _UNORDERED and isinstance(v, list) else v for k, v in spec.items()}
    return json.dumps(spec, sort_keys=True, default=str)


def prepare_out_dir(spec: SweepSpec, out_dir, *, force: bool = False, spec_text: str | None = None,
                    spec_suffix: str = ".toml") -> Path:
    """Create DIR, refuse another spec's DIR (unless force), record spec.json (+ the original text)."""
    out = Path(out_dir)
    check_sweep_dir(spec, out, force=force)
    copy = out / f"spec{spec_suffix}" if spec_text is not None and spec_suffix != ".json" else None
    if copy is not None:
        text = _copy_text(spec_text)
        if not _check_spec_copy(out, copy, spec_text, text):
            copy = None  # it already holds this text: left as it is
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / SPEC_JSON
    try:
        changed = json.loads(spec_file.read_text(encoding="utf-8")) != json.loads(json.dumps(spec.to_dict()))
    except (OSError, ValueError):
        changed = False  # none yet (check_sweep_dir refused one it cannot parse)
    write_results_json(spec_file, spec.to_dict())
    if copy is not None:
        atomic_write_text(copy, text)
    running = out / f"spec{spec_suffix}" if spec_text is not None else None  # the copy of this spec: kept
    for old in (out / f"spec{suffix}" for suffix in (".toml", ".yaml", ".yml")):
        if changed and old != running and _starts_with_header(old):  # nvcim's copy of the spec replaced (--force)
            old.unlink()
    return out


def _starts_with_header(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline() == COPY_HEADER
    except (OSError, UnicodeDecodeError):
        return False



def _copy_text(spec_text: str) -> str:
    """What nvcim's copy of a spec's text holds: COPY_HEADER, then the text (once, when run from a copy)."""
    return spec_text if spec_text.startswith(COPY_HEADER) else COPY_HEADER + spec_text


def _is_unmarked_copy(out: Path, copy: Path) -> bool:
    """Whether `copy`, without COPY_HEADER, is the copy an older nvcim wrote: it reads as the spec DIR/spec.json
    records (the name aside: a copy without one takes its file's name)."""
    from nvcim.sweep.spec import load_spec

    try:
        recorded = json.loads((out / SPEC_JSON).read_text(encoding="utf-8"))
        if not is_spec_record(recorded):
            return False
        mine = json.loads(json.dumps(load_spec(copy).to_dict()))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return _canonical({**mine, "name": None}) == _canonical({**recorded, "name": None})


def _check_spec_copy(out: Path, copy: Path, spec_text: str, copy_text: str) -> bool:
    """Whether to write the copy of the spec's text (DIR/spec.toml, ...): yes where there is none or nvcim's own
    (it begins with COPY_HEADER) holds another text; no where it already holds this text (nvcim's copy, one written
    before the header, or the user's spec run in place: never touched). Any other file of that name is the user's,
    kept: a one-line ValueError."""
    if not copy.exists() and not copy.is_symlink():
        return True
    if copy.is_file() and not copy.is_symlink():
        try:
            have = copy.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            have = None
        if have in (spec_text, copy_text):
            return False
        if have is not None and (have.startswith(COPY_HEADER) or _is_unmarked_copy(out, copy)):
            return True
    raise ValueError(f"sweep output {out}: {copy} exists and is not nvcim's copy of this spec, and a sweep would "
                     "replace it: choose another --out or move the file away")


def check_spec_copy(out_dir, spec_text: str, spec_suffix: str) -> None:
    """Refuse (one-line ValueError) a run whose copy of the spec's text would replace a user's file in DIR (what
    `run_sweep` checks before anything is written; `nvcim sweep --dry-run` says it too)."""
    if spec_suffix != ".json":
        out = Path(out_dir)
        _check_spec_copy(out, out / f"spec{spec_suffix}", spec_text, _copy_text(spec_text))


def is_recorded_spec(spec: SweepSpec, out_dir) -> bool:
    """Whether DIR/spec.json is already the record of `spec` (a resume from the recorded spec rewrites it with the
    same content)."""
    try:
        old = json.loads((Path(out_dir) / SPEC_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _canonical(old) == _canonical(json.loads(json.dumps(spec.to_dict())))


def check_sweep_dir(spec: SweepSpec, out_dir, *, force: bool = False) -> None:
    """Refuse (ValueError, one line) a DIR that is a file or, unless force, holds another spec's cells;
    reads only."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"sweep output {out} is a file: choose a directory")
    if (out / "cells").exists() and not (out / "cells").is_dir():
        raise ValueError(f"sweep output {out}: {out / 'cells'} is not a directory, and a sweep writes its cells there: "
                         "move it away or choose another --out")
    _refuse_other_nvcim_dir(out)
    token = foreign_token(out)
    if token is not None:  # a name the Ray backend writes: never a user's file replaced, whatever the backend
        raise ValueError(f"sweep output {out}: {token} is not nvcim's token file, and a sweep may replace it: move it "
                         "away or choose another --out")
    spec_file = out / SPEC_JSON
    if spec_file.exists() and not spec_file.is_file():
        raise ValueError(f"sweep output {out}: {spec_file} is not a file: choose another --out")
    if spec_file.is_file():
        try:
            old, unreadable = json.loads(spec_file.read_text(encoding="utf-8")), None
        except (UnicodeDecodeError, ValueError) as exc:
            old, unreadable = None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if unreadable is not None:  # damaged (a kill cannot do it: written atomically), or not nvcim's: kept
            raise ValueError(f"sweep output {out}: {spec_file} cannot be parsed ({unreadable}), and a sweep would "
                             "replace it: if it is the record nvcim wrote, delete it and rerun with --force to resume "
                             "the cells there; otherwise choose another --out")
        if not is_spec_record(old):  # not nvcim's: never replaced, --force or not
            raise ValueError(f"sweep output {out}: {spec_file} is not an nvcim sweep spec record, and a sweep "
                             "would replace it: choose another --out")
        new = json.loads(json.dumps(spec.to_dict()))
        if _canonical(old) != _canonical(new) and not force:
            differ = sorted(k for k in set(old) | set(new) if _canonical({k: old.get(k)}) != _canonical({k: new.get(k)}))
            what = f"{differ[0]} {old.get(differ[0])!r} there, {new.get(differ[0])!r} here" if differ == ["name"] \
                else f"keys {', '.join(differ)} differ" if differ else "it differs"
            raise ValueError(f"sweep output {out} holds cells of another spec ({what}; see {spec_file}): "
                             "choose another --out, or pass --force to run this spec there")
    elif (out / "cells").is_dir() and any((out / "cells").iterdir()) and not force:
        raise ValueError(f"sweep output {out} holds cells but no {SPEC_JSON}: choose another --out or pass --force")


def _refuse_other_nvcim_dir(out: Path) -> None:
    """A one-line ValueError when DIR is another kind of nvcim directory (a checkpoint, a training state, a
    conductance map: a sweep's files there would make it hold files it does not own) or lies inside another
    sweep's cells (its report would read the cells twice)."""
    from nvcim.io.checkpoint import is_checkpoint_dir
    from nvcim.io.conductance import ConductanceMapError, read_manifest
    from nvcim.io.train_state import is_train_state_dir

    if out.is_dir():
        kind = "an nvcim checkpoint" if is_checkpoint_dir(out) else "a training state" if is_train_state_dir(out) \
            else None
        if kind is None and (out / "manifest.json").is_file():
            with contextlib.suppress(ConductanceMapError, ValueError):
                read_manifest(out)
                kind = "a conductance map"
        if kind:
            raise ValueError(f"sweep output {out} is {kind}: choose another --out")
    for parent in Path(os.path.abspath(out)).parents:
        if parent.name == "cells" and (parent.parent / SPEC_JSON).is_file():
            try:
                sweep_there = is_spec_record(json.loads((parent.parent / SPEC_JSON).read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, ValueError):
                sweep_there = False
            if sweep_there:
                raise ValueError(f"sweep output {out} is inside the cells of the sweep in {parent.parent}: choose "
                                 "another --out")


def _refuse_stale(out: Path, done: Sequence[Cell], accept_plugin_change: bool) -> None:
    stale = stale_cells(out, done, accept_plugin_change=accept_plugin_change)
    if stale:
        c, keys = stale[0]
        why = (f"its {CELL_FILE} is missing or unreadable" if keys == [UNDEFINED]
               else f"trained on another version of {c.dataset.removeprefix('npz:')}"
               + ("" if c.data_file else ", which cannot be read now") if keys == ["data_file"]
               else "built by another version of the plugins' code (--plugin; --accept-plugin-change counts such "
                    "cells as done when the change does not touch them)" if keys == ["plugin_code"]
               else f"{', '.join(keys)} differ")
        raise ValueError(f"sweep output {out}: {len(stale)} finished cell(s) were made by another definition "
                         f"or by an unknown one (first: {c.id}, {why}), so their results may not match this spec: "
                         "choose another --out, or delete those cell directories to run them again")


def check_data(cells: Sequence[Cell], *, download: bool = True) -> None:
    """Raise nvcim.data.DatasetNotFoundError (one line: which files to put where) unless the data set of
    every cell is on disk; with `download` (a run; not a dry run), missing ones are downloaded first where
    a network is there, as training would (once, not once per cell). File names only, so a sweep checks
    its data before any cell runs."""
    for dataset, root in sorted({(c.dataset, c.train.get("data_root")) for c in cells}, key=str):
        check_dataset(dataset, root, download=download)


def needs_local_data(backend: str, address: str | None) -> bool:
    """Whether the cells' data sets must be on this machine (not: a remote backend given a cluster address)."""
    return not (get_backend(backend).remote and address is not None)


@contextlib.contextmanager
def sweep_lock(out: Path):
    """Exclusive lock on the sweep directory (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"sweep output {out} is in use by another running sweep: wait for it or use another --out") from None
        yield
    finally:
        os.close(fd)


@dataclass
class SweepSummary:
    total: int
    done_before: int
    ok: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # failed in this run
    failed_before: list = field(default_factory=list)  # failed earlier, not retried
    wall_time_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if (self.failed or self.failed_before) else 0


def plan(spec: SweepSpec, out_dir, *, retry_failed: bool = False) -> tuple[list[Cell], list[Cell], list[Cell], list[Cell]]:
    """(all cells, to run, done, failed and not retried)."""
    cells = expand(spec)
    todo, done, failed = [], [], []
    for c in cells:
        st = cell_state(out_dir, c.id)
        if st == "done":
            done.append(c)
        elif st == "failed" and not retry_failed and not failed_differences(out_dir, c):  # another definition's
            failed.append(c)                                                                # failure runs again
        else:
            todo.append(c)
    return cells, todo, done, failed


UNDEFINED = "<no readable cell.json>"  # stale_cells' key list of a finished cell without its definition


def stale_cells(out_dir, done: Sequence[Cell], *, accept_plugin_change: bool = False) -> list[tuple[Cell, list[str]]]:
    """Finished cells whose recorded definition (cell.json, threads aside) differs from this spec's cell
    of the same id, with the differing keys: e.g. a vanilla cell tested at fewer σ before the grid grew.
    A finished cell without a readable cell.json is stale too, with the keys [UNDEFINED]. A cell of an npz: data
    set whose file changed is stale ("data_file", judged by what its checkpoint recorded: `cell_differences`).
    With `accept_plugin_change`, a cell built by another version of the plugins' code is not (the user vouches that
    the change does not touch it; its checkpoint keeps the older code's digest, and a report warns of the mix)."""
    stale = []
    for c in done:
        try:
            have = json.loads((cell_dir(out_dir, c.id) / CELL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        if not isinstance(have, dict):  # no readable definition: nothing shows the result is this cell's
            stale.append((c, [UNDEFINED]))
            continue
        have.pop("threads", None)
        keys = cell_differences(cell_dir(out_dir, c.id), have, c.to_dict())
        keys = [k for k in keys if not (accept_plugin_change and k == "plugin_code")]
        if keys:
            stale.append((c, keys))
    return stale


def _duration(seconds: float) -> str:
    """A wall time as "42 s", "17 min" or "2.3 h"."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _log_line(n: int, total: int, s: Mapping) -> str:
    if s["status"] == "ok":
        name = s.get("searched") or "beta"  # the chosen value of the method's searched hyper-parameter
        extra = f" {'β' if name == 'beta' else name}={s['beta']:g}" if s.get("beta") is not None else ""
        others = s.get("others") or []  # a vanilla cell's other test σ, or a grid's (the first three shown)
        more = "".join(f", σ={o[0]:g} {o[1]:.2f}%" for o in others[:3]) + (f", {len(others) - 3} more σ"
                                                                           if len(others) > 3 else "")
        return (f"[{n}/{total}] ok     {s['id']}: σ={s['sigma']:g} mean {s['mean']:.2f}%{more}{extra} "
                f"({s['wall_time_s']:.1f} s)")
    return f"[{n}/{total}] FAILED {s['id']}: {s['error']} ({s['wall_time_s']:.1f} s)"


def run_sweep(spec: SweepSpec, out_dir, *, backend: str = "local", workers: int = 1, address: str | None = None,
              retry_failed: bool = False, force: bool = False, progress: bool = True, spec_text: str | None = None,
              spec_suffix: str = ".toml", warn: Callable[[str], None] | None = None,
              accept_plugin_change: bool = False) -> SweepSummary:
    """Run every pending cell of `spec` into `out_dir`; see nvcim.sweep's docstring for the layout.

    Before anything is written, DIR (another spec's, stale cells) and the data of the cells to run are
    checked: a missing data set is downloaded once where a network is there, else a one-line
    nvcim.data.DatasetNotFoundError is raised and no cell runs.

    `progress` shows a progress bar and a line per finished cell. Warnings (a damaged result or checkpoint
    that is not reused, partial work redone, a result recorded but implausible) are shown whatever
    `progress` is: each line (without a "warning: " prefix) goes to `warn`, by default `warnings.warn` with
    SweepWarning."""
    chosen = get_backend(backend)
    if chosen.check is not None:
        chosen.check()  # (Ray installed?) before anything is written
    if not is_int(workers) or workers < 1:
        raise ValueError(f"workers={workers!r} is invalid: use an integer >= 1")
    t0 = time.perf_counter()
    out = check_output_path(out_dir, "sweep output", is_dir=True)
    # every input checked before anything is written or downloaded (checked again under the lock)
    check_sweep_dir(spec, out, force=force)
    if spec_text is not None:  # a user's spec.toml there: refused before the lock file
        check_spec_copy(out, spec_text, spec_suffix)
    _, todo, done, _ = plan(spec, out, retry_failed=retry_failed)
    _refuse_stale(out, done, accept_plugin_change)
    check_cell_paths(out, todo)  # a file in the way, a name too long: said now, not as the sweep's crash
    if needs_local_data(backend, address):  # a cluster's machines hold their own data
        check_data(todo)
    out.mkdir(parents=True, exist_ok=True)
    with sweep_lock(out):  # before spec.json is touched: --force must not rewrite a running sweep's spec
        prepare_out_dir(spec, out, force=force, spec_text=spec_text, spec_suffix=spec_suffix)
        cells, todo, done, failed_before = plan(spec, out, retry_failed=retry_failed)
        _refuse_stale(out, done, accept_plugin_change)
        if accept_plugin_change and (adopted := adopt_plugin_change(out, todo)):
            (warn or _api_warn)(f"{len(adopted)} unfinished cell(s) built under the earlier plugins' code keep their "
                                "partial work (--accept-plugin-change): " + ", ".join(adopted[:3])
                                + (" ..." if len(adopted) > 3 else ""))
        damaged = [(c.id, problem) for c in todo if (problem := result_problem(out, c.id))]
        summary = SweepSummary(total=len(cells), done_before=len(done), failed_before=[c.id for c in failed_before])
        bar = tqdm(total=len(cells), initial=len(done) + len(failed_before), unit="cell", desc=spec.name,
                   file=sys.stderr, disable=not progress or not sys.stderr.isatty(), dynamic_ncols=True)  # a log
        # file gets the per-cell lines (with an ETA), not the bar's carriage returns
        say = (lambda m: tqdm.write(m, file=sys.stderr)) if progress else (lambda m: None)
        warn = warn or _api_warn  # quiet or not
        if failed_before:
            say(f"{len(failed_before)} cell(s) failed earlier and are not retried (pass --retry-failed)")
        for cid, problem in damaged:
            warn(f"cell {cid}: {problem}: it is not counted as done and runs again")
        counter = [len(done) + len(failed_before)]
        eta = Eta(out, todo, done)  # cells weighed by what finished cells of their kind took

        warned: set[str] = set()

        def on_done(s: Mapping) -> None:
            counter[0] += 1
            (summary.ok if s["status"] == "ok" else summary.failed).append(s["id"])
            bar.update(1)
            eta.finished(s)
            left_s = eta.seconds(time.perf_counter() - t0)
            say(f"{_log_line(counter[0], len(cells), s)}{'' if left_s is None else f', ETA {_duration(left_s)}'}")
            for line in s.get("warnings") or ():
                if line not in warned:  # the same warning from every cell's model: once
                    warned.add(line)
                    warn(line)

        try:
            if todo:  # the backend's `say` is for warnings: shown quiet or not
                with cell_lines(progress):  # running cells' progress lines (a process pool's workers too)
                    chosen.run(todo, out, spec, on_done, warn, workers=workers, address=address)
        finally:
            bar.close()
    summary.wall_time_s = time.perf_counter() - t0
    return summary
