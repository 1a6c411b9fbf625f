"""The files of a sweep directory: where a cell's files go, what state a cell is in, getting its directory ready.

    DIR/spec.json, DIR/spec.<suffix>    the validated spec, the original text (nvcim.sweep.runner)
    DIR/.sweep.lock, DIR/.sweep-token   the running sweep's lock; the Ray driver's token
    DIR/cells/<id>/                     one cell's files (see the package docstring): cell.json,
                                        checkpoint/, train_state/, beta/<β>/, result.json, failed.json

A cell is 'done' when its result.json is a valid result of this cell (`result_problem`), 'failed' when
it holds failed.json, else 'pending'. Writes a kill interrupted leave hidden ".tmp" / ".old-" entries of
nvcim's own file names (`_temp_of`) that `prepare_cell_dir` clears before the cell runs again.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from nvcim.evaluate.files import EvaluationFile, read_result_file
from nvcim.io.checkpoint import CONFIG_FILE as CHECKPOINT_CONFIG
from nvcim.io.checkpoint import WEIGHTS_FILE as CHECKPOINT_WEIGHTS
from nvcim.io.files import atomic_write_text, current_umask
from nvcim.io.train_state import RECORD_FILE as TRAIN_STATE_RECORD
from nvcim.io.train_state import TENSORS_FILE as TRAIN_STATE_TENSORS
from nvcim.sweep.cells import Cell, fmt_beta

RESULT_FILE = "result.json"
TRAIN_STATE_DIR = "train_state"  # beside a checkpoint/ while it trains (nvcim.io.train_state); gone once it is written
FAILED_FILE = "failed.json"
CELL_FILE = "cell.json"
SCORE_FILE = "score.json"
SPEC_JSON = "spec.json"
# The first line of nvcim's copy of a spec's text (DIR/spec.toml, ...; TOML and YAML comments alike): what marks the
# file as nvcim's
COPY_HEADER = "# nvcim sweep: a copy of the spec this directory's cells ran; nvcim replaces it (edit your own)\n"
LOCK_FILE = ".sweep.lock"
TOKEN_FILE = ".sweep-token"


def recorded_name(spec_path) -> str | None:
    """The name DIR/spec.json records when `spec_path` is nvcim's copy of a spec in DIR (it begins with COPY_HEADER),
    else None: a copy of a spec without a name resumes under the spec's name, not its own file's ("spec")."""
    path = Path(spec_path)
    try:
        with open(path, encoding="utf-8") as f:
            if f.readline() != COPY_HEADER:
                return None
        recorded = json.loads((path.parent / SPEC_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    name = recorded.get("name") if isinstance(recorded, dict) else None
    return name if isinstance(name, str) and name else None


def cell_dir(out_dir, cell_id: str) -> Path:
    return Path(out_dir) / "cells" / cell_id


def check_cell_paths(out_dir, cells: Sequence[Cell]) -> None:
    """A one-line ValueError, before anything is written, when a cell's directory cannot be made: a component of
    its id too long for a file name (a spec value such as sigmas = [1e300] printed in full), or a file (not a
    folder) where one of its folders goes (a cell failing there would have nowhere to record it)."""
    for c in cells:
        d = cell_dir(out_dir, c.id)
        long = next((part for part in Path(c.id).parts if len(part.encode()) > _NAME_MAX), None)
        if long is not None:
            raise ValueError(f"cell {c.id[:60]}...: its directory name {long[:20]}... is {len(long.encode())} bytes, "
                             f"more than a file name may hold ({_NAME_MAX}): use spec values of fewer digits")
        for p in (*reversed(d.relative_to(out_dir).parents), d.relative_to(out_dir)):
            q = Path(out_dir) / p
            if q.exists() and not q.is_dir():
                raise ValueError(f"{q} is a file where the sweep puts the folder of cell {c.id}: move it away")


def foreign_results(out_dir, cells: Sequence[Cell]) -> list[str]:
    """Ids (paths under DIR/cells) of the results there that are not cells of `cells`: e.g. the σ-independent
    "…/correctnet/seed0" of a sweep run before CorrectNet's λ was searched per σ. `nvcim report DIR` reads every
    result under DIR, so a sweep names them (sorted)."""
    root = Path(out_dir) / "cells"
    if not root.is_dir():
        return []
    ids = {c.id for c in cells}
    found = (f.parent.relative_to(root).as_posix() for f in root.rglob(RESULT_FILE))
    return sorted(cid for cid in found if cid not in ids)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_TOKEN_TEXT = re.compile(r"[0-9a-f]{32}\n")  # what the Ray backend writes in DIR/.sweep-token


def foreign_token(out_dir) -> Path | None:
    """DIR/.sweep-token when something is there that is not a token nvcim's Ray backend wrote (a user's file, a link,
    a directory): a sweep would replace it. None when absent or nvcim's."""
    path = Path(out_dir) / TOKEN_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        ours = path.is_file() and not path.is_symlink() and _TOKEN_TEXT.fullmatch(path.read_text("utf-8")) is not None
    except (OSError, UnicodeDecodeError):
        ours = False
    return None if ours else path


def result_problem(out_dir, cell_id: str) -> str | None:
    """Why the cell's result.json, when there is one, is not a finished result of this cell (None: it is,
    or there is none): not valid JSON (truncated, damaged), not an mc_eval result, no results, another
    cell's. Such a cell is not done: it runs again."""
    file = cell_dir(out_dir, cell_id) / RESULT_FILE
    if not file.is_file():
        return None
    try:
        rec = read_result_file(file)
    except OSError as exc:
        return f"{RESULT_FILE} cannot be read ({_first_line(exc)})"
    except ValueError as exc:  # not JSON, or a malformed result
        return f"{RESULT_FILE} is not a complete result ({_first_line(exc)})"
    if not isinstance(rec, EvaluationFile):
        return f"{RESULT_FILE} is not an mc_eval result"
    if not isinstance(rec.cell, dict) or rec.cell.get("id") != cell_id:
        return f"{RESULT_FILE} is not this cell's"
    results = [r if isinstance(r, dict) else r.to_dict() for r in rec.results]  # (numeric sigma, mean: checked)
    for r in results:  # what the report refuses or drops must not count as done (an edit, a bad merge)
        if not (math.isfinite(r["mean"]) and 0 <= r["mean"] <= 100):
            return f"{RESULT_FILE} holds a mean accuracy {r['mean']!r} at σ = {r['sigma']!r}, not one in [0, 100] %"
    wanted, have = rec.cell.get("test_sigmas"), sorted(round(float(r["sigma"]), 9) for r in results)
    if isinstance(wanted, list) and all(isinstance(v, (int, float)) for v in wanted) \
            and sorted(round(float(v), 9) for v in wanted) != have:
        return f"{RESULT_FILE} holds σ {have}, not the cell's test σ {sorted(wanted)}"
    return None


def cell_state(out_dir, cell_id: str) -> str:
    """'done' (a valid result.json, see result_problem), 'failed' (failed.json) or 'pending'."""
    d = cell_dir(out_dir, cell_id)
    if (d / RESULT_FILE).is_file() and result_problem(out_dir, cell_id) is None:
        return "done"
    if (d / FAILED_FILE).is_file():
        return "failed"
    return "pending"


def read_score(path: Path, beta: float) -> dict | None:
    """A β candidate's score.json, or None when it is absent or unreadable (the candidate is scored again)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("beta") != float(beta) or not ("val_mean" in rec and "status" in rec):
        return None
    if rec["val_mean"] is not None and not (isinstance(rec["val_mean"], (int, float)) and
                                            not isinstance(rec["val_mean"], bool) and math.isfinite(rec["val_mean"])):
        return None
    return rec


def scored_candidates(out_dir, cell: Cell) -> int:
    """How many of a β search's candidates have a readable score.json (0 for a cell without a search)."""
    d = cell_dir(out_dir, cell.id)
    return sum(read_score(d / "beta" / fmt_beta(b) / SCORE_FILE, b) is not None for b in cell.betas or ())


def saved_epoch(state: Path) -> tuple[int, int] | None:
    """(epoch, epochs) of the training state at `state` if a run resumes from it (1 <= epoch < epochs), else None."""
    try:
        rec = json.loads((state / TRAIN_STATE_RECORD).read_text(encoding="utf-8"))
        point = (rec["epoch"], rec["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return point if all(type(v) is int for v in point) and 1 <= point[0] < point[1] else None


def partial_progress(out_dir, cell: Cell, accept_plugin_change: bool = False) -> str | None:
    """What a pending cell has done that a rerun keeps, for `nvcim sweep --dry-run` (None: nothing): finished β
    candidates and a training's last saved epoch, e.g. "β 2 of 4 scored; β 1e-3 resumes after epoch 3 of 12".
    Read from the JSON records and a look at the end of the state's tensor archive (nothing is loaded; a state
    damaged in a way that shows only when loading shows here and is redone when run). Partial work of another
    definition (`prepare_cell_dir` removes it) is said as such."""
    d = cell_dir(out_dir, cell.id)
    differs = partial_definition(Path(out_dir), cell) or []
    if accept_plugin_change and differs == ["plugin_code"]:
        differs = []
    if differs and any(f.name != CELL_FILE for f in d.iterdir()):  # work kept there, not just its definition
        return (f"partial work of another definition ({', '.join(differs)} differ"
                + ("; --accept-plugin-change keeps it" if differs == ["plugin_code"] else "")
                + "): trained from the start")
    parts = []
    if cell.betas:
        scored = scored_candidates(out_dir, cell)
        if scored:
            parts.append(f"β {scored} of {len(cell.betas)} scored")
    states = [("", d / TRAIN_STATE_DIR)] + [(f"β {fmt_beta(b)} ", d / "beta" / fmt_beta(b) / TRAIN_STATE_DIR)
                                            for b in cell.betas or ()]
    for label, state in states:
        if not state.is_dir():
            continue
        saved = saved_epoch(state)
        if saved and zipfile.is_zipfile(state / TRAIN_STATE_TENSORS):  # the archive whole (a look at its end only)
            parts.append(f"{label}training resumes after epoch {saved[0]} of {saved[1]}")
        elif any(state.iterdir()):
            parts.append(f"{label}training state damaged: trained from the start")
    searched = not cell.betas or scored_candidates(out_dir, cell) == len(cell.betas)  # (else the choice may change)
    if searched and all((d / "checkpoint" / f).is_file() for f in (CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS)):
        parts.append("trained: its checkpoint is kept, the test runs")  # (interrupted while testing)
    return "; ".join(parts) or None


# The names nvcim's own writes give their temporaries in a cell (tempfile's random part: 8 of [a-z0-9_]):
# atomic_write_* ".NAME.XXXXXXXX.tmp", a directory being written ".NAME.tmp-XXXXXXXX", one moved aside while its successor
# is renamed in ".NAME.old-XXXXXXXX", a finished state being deleted ".train_state.done-XXXXXXXX", the probe
# ".nvcim-probe-XXXXXXXX.tmp".
# Only those of nvcim's own file and directory names count: a user's ".draft.tmp" is not nvcim's.
_OWN_FILES = (CELL_FILE, RESULT_FILE, FAILED_FILE, SCORE_FILE, CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS,
              TRAIN_STATE_RECORD, TRAIN_STATE_TENSORS)
_OWN_DIRS = ("checkpoint", TRAIN_STATE_DIR)
_RANDOM = r"[a-z0-9_]{8}"
_NAME_MAX = 255  # bytes of one path component on the usual file systems
_AFTER_THE_RESULT = ("keep_beta_checkpoints",)  # eval keys that act only once a cell's result is written
_TEMP_NAME = re.compile(rf"\.(?P<file>.+)\.{_RANDOM}\.tmp|\.(?P<dir>.+)\.tmp-{_RANDOM}|\.(?P<old>.+)\.old-{_RANDOM}"
                        rf"|\.(?P<done>.+)\.done-{_RANDOM}|\.nvcim-probe-{_RANDOM}\.tmp")


def _temp_of(p: Path) -> tuple[str, str] | None:
    """("temp" or "old", the name it stands for) when `p` is a leftover of an nvcim write a kill interrupted: a temp
    file or directory, or a previous copy moved aside; None for anything else (a user's hidden file)."""
    m = _TEMP_NAME.fullmatch(p.name)
    if m is None or p.is_symlink():
        return None
    if m["file"] is not None:
        return ("temp", m["file"]) if m["file"] in _OWN_FILES and p.is_file() else None
    if m["dir"] is not None:
        return ("temp", m["dir"]) if m["dir"] in _OWN_DIRS and p.is_dir() else None
    if m["old"] is not None:
        return ("old", m["old"]) if m["old"] in _OWN_DIRS and p.is_dir() else None
    if m["done"] is not None:  # a finished training's state being deleted (io.train_state.remove_train_state)
        return ("temp", m["done"]) if m["done"] == TRAIN_STATE_DIR and p.is_dir() else None
    return ("temp", "") if p.is_file() else None  # the probe


def _clean_temps(d: Path) -> None:
    """Remove leftovers of nvcim's writes a kill interrupted (its temp files and dirs) under `d`; put back a
    directory a kill left moved aside."""
    if not d.is_dir():
        return
    found = [(p, t) for p in d.rglob(".*") if (t := _temp_of(p)) is not None]
    for p, (kind, name) in sorted(found, key=lambda f: f[1][0] == "old"):  # temps first, then previous copies
        original = p.parent / name
        if kind == "old":
            if not original.exists() and not original.is_symlink():  # killed between a save's two renames
                os.replace(p, original)
                continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _is_own_file(parts: tuple[str, ...]) -> bool:
    """Whether a path in a cell directory (its parts, e.g. ("beta", "1e-3", "checkpoint", "config.json")) is one
    that a sweep writes."""
    *where, name = parts
    checkpoint = name in (CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS)
    state = name in (TRAIN_STATE_RECORD, TRAIN_STATE_TENSORS)
    return ((not where and name in (CELL_FILE, RESULT_FILE, FAILED_FILE))
            or (where == ["checkpoint"] and checkpoint)
            or (where == [TRAIN_STATE_DIR] and state)
            or (len(where) == 2 and where[0] == "beta" and name == SCORE_FILE)
            or (len(where) == 3 and where[0] == "beta" and where[2] == "checkpoint" and checkpoint)
            or (len(where) == 3 and where[0] == "beta" and where[2] == TRAIN_STATE_DIR and state))


def _is_own_dir(parts: tuple[str, ...]) -> bool:
    """Whether a path in a cell directory is where a sweep writes a directory (checkpoint/, train_state/, beta/<β>/
    and theirs)."""
    *where, name = parts
    return ((not where and name in _OWN_DIRS) or (where == ["beta"])
            or (len(where) == 2 and where[0] == "beta" and name in _OWN_DIRS))


def remove_cell_files(d: Path) -> None:
    """Remove what a sweep writes in a cell directory (cell.json, result.json, failed.json, the checkpoints' config
    and weights, β candidates' score.json, temp leftovers, a link standing where it writes a directory) and the
    directories left empty; anything else is not nvcim's and stays where it is (a linked directory's files too)."""
    for p in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        if not p.exists() and not p.is_symlink():  # inside a temp directory removed above
            continue
        temp = _temp_of(p) is not None
        if temp and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif (temp or _is_own_file(p.relative_to(d).parts)) and (p.is_file() or p.is_symlink()):
            p.unlink(missing_ok=True)
        elif p.is_symlink() and p.is_dir() and _is_own_dir(p.relative_to(d).parts):
            p.unlink()  # a linked directory where nvcim writes one (another definition's checkpoint would be
            # reused): the link goes, what it names stays
        elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
    if not any(d.iterdir()):
        d.rmdir()


_MISSING = object()


@functools.cache
def _train_defaults() -> dict:
    from nvcim.train import TrainConfig

    return json.loads(json.dumps(TrainConfig().to_dict()))  # every training field at its default, as JSON


def definition_differences(have: Mapping, want: Mapping) -> list[str]:
    """The top-level keys in which a recorded cell definition (cell.json) differs from a cell's `to_dict()`. A
    training field added to nvcim since the cell was made, at its default value, is no difference: the cell
    trained exactly as one made now would."""
    have, want = dict(have), json.loads(json.dumps(want))
    for d in (have, want):  # what happens to the candidates' weights after the result is written: not the cell's work
        if isinstance(d.get("eval"), dict):
            d["eval"] = {k: v for k, v in d["eval"].items() if k not in _AFTER_THE_RESULT}
    if isinstance(have.get("train"), dict) and isinstance(want.get("train"), dict):
        added = {k: v for k, v in want["train"].items()
                 if k not in have["train"] and _train_defaults().get(k, _MISSING) == v}
        have["train"] = {**added, **have["train"]}
    return sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))


def cell_differences(d: Path, have: Mapping, want: Mapping) -> list[str]:
    """`definition_differences` of the cell in directory d: its recorded definition `have` against `want`. The sha256
    of an npz: data set's file ("data_file") is judged by what the cell's checkpoints recorded they were trained on
    (result.json, checkpoint/config.json, the β candidates' checkpoints) whenever they record it, so a cell whose
    training read another version of the file differs even if its cell.json agrees, and one defined before cells
    recorded the file does not when its checkpoints were trained on this one."""
    keys = definition_differences(have, want)
    if "plugin_code" in keys and "plugin_code" not in have:  # defined before cells recorded their plugins' code:
        built_by = _recorded(d, lambda config: config.get("plugins_sha256"))  # judged by its checkpoints, if they say
        if not built_by or built_by == {want.get("plugin_code")}:
            keys = [k for k in keys if k != "plugin_code"]
    trained_on = _recorded_data_files(d) if want.get("data_file") is not None else set()  # other data: not read
    if trained_on:
        keys = [k for k in keys if k != "data_file"]
        if trained_on != {want["data_file"]}:
            keys = sorted([*keys, "data_file"])
    return keys


def _recorded_data_files(d: Path) -> set[str]:
    """The sha256 of every npz: file the checkpoints in cell directory d record they were trained on."""
    return _recorded(d, lambda config: config["data"]["file"]["sha256"])


def _recorded(d: Path, read) -> set[str]:
    """The strings `read(checkpoint config)` gives for the checkpoints of cell directory d (result.json's and every
    checkpoint/config.json); configs it cannot read there are skipped."""
    found = set()
    for path in [d / RESULT_FILE, *d.glob(f"**/checkpoint/{CHECKPOINT_CONFIG}")]:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            value = read(payload["checkpoint_config"] if path.name == RESULT_FILE else payload)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(value, str):
            found.add(value)
    return found


def failed_differences(out_dir, cell: Cell) -> list[str]:
    """For a failed cell: the keys in which the definition that failed (its cell.json, else failed.json's "cell";
    threads and wall time aside) differs from `cell`, e.g. ["train"] after a spec edit fixed the learning rate; []
    when it is this very cell. A failure of another definition is not this cell's: it runs again."""
    d = cell_dir(out_dir, cell.id)
    if not (d / FAILED_FILE).is_file():
        return []
    have = None
    for file, pick in ((CELL_FILE, lambda rec: rec), (FAILED_FILE, lambda rec: rec.get("cell"))):
        try:
            have = pick(json.loads((d / file).read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            have = None
        if isinstance(have, dict):
            break
    if not isinstance(have, dict):
        return []  # no readable definition: kept as failed (--retry-failed runs it again)
    return cell_differences(d, {k: v for k, v in have.items() if k not in ("threads", "wall_time_s")}, cell.to_dict())


def prepare_cell_dir(out_dir, cell: Cell, threads: int) -> Path:
    """Make the cell's directory ready to (re)run: remove nvcim's files of another definition's partial work
    (a user's own files there stay), drop temp leftovers, an old failed.json and an unreadable result.json, and
    write cell.json."""
    d = cell_dir(out_dir, cell.id)
    want = {**cell.to_dict(), "threads": threads}
    if d.is_dir():
        try:
            have = json.loads((d / CELL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        if not isinstance(have, dict) or cell_differences(d, have, want):
            remove_cell_files(d)
    d.mkdir(parents=True, exist_ok=True)
    _clean_temps(d)
    (d / FAILED_FILE).unlink(missing_ok=True)
    if result_problem(out_dir, cell.id):  # a damaged result of this cell: the run writes a new one
        (d / RESULT_FILE).unlink()
    if not (d / CELL_FILE).is_file():
        atomic_write_text(d / CELL_FILE, json.dumps(want, indent=2) + "\n")  # Python JSON: round-trips exactly
    return d


def partial_work_of_other_threads(out: Path, cells: Sequence[Cell], threads: int) -> list[tuple[str, Any]]:
    """(cell id, its threads) of unfinished cells whose partial work differs from `cells` only in the thread
    count: prepare_cell_dir will remove it (nvcim's files of it), which the user should hear about."""
    found = []
    for c in cells:
        try:
            have = json.loads((cell_dir(out, c.id) / CELL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(have, dict) or have.get("threads") == threads:
            continue
        if not cell_differences(cell_dir(out, c.id), {k: v for k, v in have.items() if k != "threads"}, c.to_dict()):
            found.append((c.id, have.get("threads")))
    return found


def other_threads_warning(out: Path, cells: Sequence[Cell], threads: int) -> str | None:
    """What a backend says before it redoes partial work made with another thread count (None: there is none)."""
    redo = partial_work_of_other_threads(out, cells, threads)
    if not redo:
        return None
    return (f"{len(redo)} unfinished cell(s) (first: {redo[0][0]}) hold partial work made with {redo[0][1]} thread(s) "
            f"per cell, this run uses {threads}: it is redone from scratch so that results stay bitwise reproducible "
            "(to keep it, stop and rerun with the earlier --workers / backend, or pin [resources] threads_per_cell)")


def partial_definition(out: Path, cell: Cell) -> list[str] | None:
    """The definition keys (threads aside) in which an unfinished cell's partial work differs from `cell` (None: no
    readable cell.json there: nothing kept to judge)."""
    d = cell_dir(out, cell.id)
    try:
        have = json.loads((d / CELL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(have, dict):
        return None
    return cell_differences(d, {k: v for k, v in have.items() if k != "threads"}, cell.to_dict())


def adopt_plugin_change(out: Path, cells: Sequence[Cell]) -> list[str]:
    """With --accept-plugin-change: the unfinished cells whose partial work (a training state, scored β candidates)
    differs from their definition only in the plugins' code take the new code into their cell.json, so that
    `prepare_cell_dir` keeps that work (the user vouches the edit does not change it; the training resume warns that
    its epochs ran under other code). Returns their ids."""
    adopted = []
    for c in cells:
        d = cell_dir(out, c.id)
        if partial_definition(out, c) == ["plugin_code"] and not (d / FAILED_FILE).is_file():  # a failure under the
            # earlier code (perhaps what the edit fixes) is not vouched for: it runs again from the start
            have = json.loads((d / CELL_FILE).read_text(encoding="utf-8"))
            have["plugin_code"] = c.to_dict().get("plugin_code")
            atomic_write_text(d / CELL_FILE, json.dumps(have, indent=2) + "\n")
            adopted.append(c.id)
    return adopted


def swap_leftovers(d: Path, kind: str) -> list[Path]:
    """The hidden siblings ".NAME.tmp-XXXXXXXX" (kind "tmp") or ".NAME.old-XXXXXXXX" ("old") of directory `d` that an
    interrupted `link_or_copy_dir` (mkdtemp's 8 random characters) left: never a user's ".NAME.tmp-notes"."""
    pattern = re.compile(rf"\.{re.escape(d.name)}\.{kind}-{_RANDOM}")
    return sorted(p for p in d.parent.glob(f".{d.name}.{kind}-*")
                  if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def link_or_copy_dir(src: Path, dst: Path, names: Sequence[str] = (CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS)) -> None:
    """Atomically make the new directory `dst` hold the files `names` of directory `src` (hard-linked when
    possible; the directory gets the usual permissions, not mkdtemp's 0700): only nvcim's own files travel (a
    user's file in `src` stays there). `dst` must not exist (the caller removed nvcim's files of it first)."""
    if dst.exists():
        raise FileExistsError(f"{dst} exists: nvcim copies a checkpoint only into a new directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        for name in names:
            try:
                os.link(src / name, tmp / name)
            except FileNotFoundError:
                raise
            except OSError:
                shutil.copy2(src / name, tmp / name)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
