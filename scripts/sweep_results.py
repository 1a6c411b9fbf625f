"""Keep a sweep's finished results without its weights, and put them back (long CPU runs across sessions).

A sweep directory's checkpoints are large and are not committed; its results are small. `save` copies what
`nvcim report` reads and what a resumed sweep needs to skip a finished cell, and nothing else: spec.json, the
spec's text (spec.toml), and each *done* cell's cell.json and result.json (a cell is done when its result.json
is a valid result of that cell, `nvcim.sweep.files.cell_state`). `restore` copies such an archive into a sweep
directory (a new one, or one of the same spec), never replacing a file that is there, so that
`nvcim sweep SPEC --out DIR` then runs only the cells that are not finished. A restored cell has no checkpoint:
`nvcim report` reads its result (the checkpoint's config is recorded in it); `nvcim eval` of that cell's model
needs the model trained again.

    python scripts/sweep_results.py save repro_out/fashion_convergence10 docs/reproduction/partial/fashion_convergence10
    python scripts/sweep_results.py restore docs/reproduction/partial/fashion_convergence10 repro_out/fashion_convergence10

Both refuse, with one line on stderr and exit 2 and before writing anything, a source that is not a sweep directory
(no spec.json) and a destination that holds another spec's record or is neither empty nor of this spec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nvcim.io.files import atomic_write_bytes
from nvcim.sweep import sweep_lock
from nvcim.sweep.files import CELL_FILE, LOCK_FILE, RESULT_FILE, SPEC_JSON, cell_state


def _spec_record(d: Path) -> dict | None:
    """The parsed DIR/spec.json, or None when there is none; ValueError when it is not JSON."""
    f = d / SPEC_JSON
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{f} is not a sweep spec record ({exc}): choose another directory") from None


_FILE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".gz", ".json")  # not a directory's name


def _spec_files(d: Path) -> list[Path]:
    """spec.json and the spec's text copies (spec.toml, spec.yaml, ...) of a sweep directory."""
    return sorted(p for p in d.glob("spec.*") if p.is_file())


def _done_cells(sweep_dir: Path) -> tuple[list[Path], list[str]]:
    """(the done cells' directories relative to sweep_dir, the ids of done cells without a cell.json): a cell is
    archived with its definition or not at all, since a resumed sweep checks a finished cell against it."""
    cells = sweep_dir / "cells"
    found, undefined = [], []
    for result in sorted(cells.rglob(RESULT_FILE)):
        cell_id = result.parent.relative_to(cells).as_posix()
        if cell_state(sweep_dir, cell_id) != "done":
            continue
        if (result.parent / CELL_FILE).is_file():
            found.append(result.parent.relative_to(sweep_dir))
        else:
            undefined.append(cell_id)
    return found, undefined


def _check_pair(src: Path, dst: Path, action: str) -> None:
    """Refuse (ValueError, one line) a source that is not a sweep directory or archive, and a destination that
    holds another spec's record, or is neither empty nor of this spec; `save` also a destination that holds
    more than an archive does (a sweep directory: a lock, checkpoints, failed cells)."""
    if not src.is_dir():
        raise ValueError(f"{src} is not a directory: give a sweep directory (nvcim sweep --out) or an archive")
    record = _spec_record(src)
    if record is None:
        raise ValueError(f"{src} has no {SPEC_JSON}: give a sweep directory (nvcim sweep --out) or an archive")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst} is a file: give a directory")
    if dst.resolve() != src.resolve() and dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{dst} is inside {src}: a report of {src} would read every result twice; give a directory "
                         "outside it")
    if action == "save" and not dst.exists() and dst.name.lower().endswith(_FILE_SUFFIXES) and dst.name.split(".")[0]:
        raise ValueError(f"{dst} names a file ({dst.name}), but an archive is a directory of JSON files (commit it, "
                         f"or pack it yourself): give a directory, e.g. {dst.parent / dst.name.split('.')[0]}")
    other = _spec_record(dst) if dst.is_dir() else None
    if other is None and dst.is_dir() and any(p.name != LOCK_FILE for p in dst.iterdir()):
        raise ValueError(f"{dst} is not empty and has no {SPEC_JSON}, so it is neither an archive nor a sweep "
                         "directory of this spec: choose another directory")
    if other is not None and json.dumps(other, sort_keys=True) != json.dumps(record, sort_keys=True):
        raise ValueError(f"{dst} holds another spec's record ({dst / SPEC_JSON}): choose another directory")
    if action == "save" and dst.is_dir():
        extra = [p.relative_to(dst).as_posix() for p in sorted(dst.rglob("*")) if p.is_file() and not (
            p.parent == dst and p.name.startswith("spec.") or p.name in (CELL_FILE, RESULT_FILE)
            or p.name.startswith(".") and p.name.endswith(".tmp"))]  # (an interrupted atomic write's temp)
        if extra:
            raise ValueError(f"{dst} holds {extra[0]}, which an archive does not: it looks like a sweep directory "
                             "(did you mean restore?); choose another directory")


def copy_results(src, dst, action: str) -> tuple[int, list[str]]:
    """Copy the spec files and done cells of src into dst; (files written, notes for the user).

    save: dst is the archive this script writes, so its files are replaced by the sweep's newer ones. restore:
    dst is a sweep directory, so a cell is restored only where dst has no directory for it (one that is there,
    finished or not, is the sweep's own and stays). Every target is checked before the first write; within a
    cell, cell.json is written before result.json, so an interrupted copy never leaves a result without its
    definition."""
    src, dst = Path(src), Path(dst)
    _check_pair(src, dst, action)
    cells, undefined = _done_cells(src)
    notes = [f"{len(undefined)} done cell(s) have no {CELL_FILE} and were not copied (first: {undefined[0]})"
             ] if undefined else []
    plan = [(p.relative_to(src), p.read_bytes()) for p in _spec_files(src)]
    kept = []
    for cell in cells:
        if action == "restore" and (dst / cell).exists():
            kept.append(cell.as_posix())
            continue
        plan += [(cell / name, (src / cell / name).read_bytes()) for name in (CELL_FILE, RESULT_FILE)]
    if kept:
        notes.append(f"{len(kept)} cell(s) already in {dst} were kept as they are (first: {kept[0]})")
    todo = []
    for rel, data in plan:
        target = dst / rel
        if target.exists() and not target.is_file():
            raise ValueError(f"{target} exists and is not a file: move it away")
        if target.is_file() and (action == "restore" or target.read_bytes() == data):
            continue  # a restore never replaces a file of the sweep directory
        todo.append((target, data))
    for target, data in todo:
        atomic_write_bytes(target, data)
    return len(todo), notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("save", "restore"))
    p.add_argument("source", help="save: the sweep directory; restore: the archive (a directory)")
    p.add_argument("dest", help="save: the archive, a directory; restore: the sweep directory")
    args = p.parse_args(argv)
    try:
        if args.action == "restore":  # not into a sweep that is running there
            dest = Path(args.dest)
            _check_pair(Path(args.source), dest, args.action)
            dest.mkdir(parents=True, exist_ok=True)
            with sweep_lock(dest):
                written, notes = copy_results(args.source, dest, args.action)
        else:
            written, notes = copy_results(args.source, args.dest, args.action)
    except (ValueError, OSError) as exc:
        print(f"sweep_results.py: {exc}", file=sys.stderr)
        return 2
    print(f"{args.action}: {written} file(s) written to {args.dest}")
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
