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
from nvcim.sweep.files import CELL_FILE, RESULT_FILE, SPEC_JSON, cell_state


def _spec_record(d: Path) -> dict | None:
    """The parsed DIR/spec.json, or None when there is none; ValueError when it is not JSON."""
    f = d / SPEC_JSON
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{f} is not a sweep spec record ({exc}): choose another directory") from None


def _spec_files(d: Path) -> list[Path]:
    """spec.json and the spec's text copies (spec.toml, spec.yaml, ...) of a sweep directory."""
    return sorted(p for p in d.glob("spec.*") if p.is_file())


def _done_cell_files(sweep_dir: Path) -> list[Path]:
    """cell.json and result.json of every done cell, relative to sweep_dir."""
    cells = sweep_dir / "cells"
    files = []
    for result in sorted(cells.rglob(RESULT_FILE)):
        cell_id = result.parent.relative_to(cells).as_posix()
        if cell_state(sweep_dir, cell_id) != "done":
            continue
        files.append(result.relative_to(sweep_dir))
        if (result.parent / CELL_FILE).is_file():
            files.append((result.parent / CELL_FILE).relative_to(sweep_dir))
    return files


def _check_pair(src: Path, dst: Path) -> dict:
    """The source's spec record, after checking that src is a sweep directory and dst holds no other spec's."""
    if not src.is_dir():
        raise ValueError(f"{src} is not a directory: give a sweep directory (nvcim sweep --out) or an archive")
    record = _spec_record(src)
    if record is None:
        raise ValueError(f"{src} has no {SPEC_JSON}: give a sweep directory (nvcim sweep --out) or an archive")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst} is a file: give a directory")
    other = _spec_record(dst) if dst.is_dir() else None
    if other is None and dst.is_dir() and any(dst.iterdir()):
        raise ValueError(f"{dst} is not empty and has no {SPEC_JSON}, so it is neither an archive nor a sweep "
                         "directory of this spec: choose another directory")
    if other is not None and json.dumps(other, sort_keys=True) != json.dumps(record, sort_keys=True):
        raise ValueError(f"{dst} holds another spec's record ({dst / SPEC_JSON}): choose another directory")
    return record


def copy_results(src, dst, *, replace: bool) -> tuple[int, int]:
    """Copy the spec files and done cells' files of src into dst; (files written, files kept as they were).
    replace: whether a differing file in dst is replaced (save: dst is the archive this script writes) or kept
    (restore: dst is a sweep directory whose own results win). Refuses (ValueError, one line) before writing."""
    src, dst = Path(src), Path(dst)
    _check_pair(src, dst)
    files = [p.relative_to(src) for p in _spec_files(src)] + _done_cell_files(src)
    written = kept = 0
    for rel in files:
        data, target = (src / rel).read_bytes(), dst / rel
        if target.is_file() and (target.read_bytes() == data or not replace):
            kept += 1
            continue
        if target.exists() and not target.is_file():
            raise ValueError(f"{target} exists and is not a file: move it away")
        atomic_write_bytes(target, data)
        written += 1
    return written, kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("save", "restore"))
    p.add_argument("source", help="save: the sweep directory; restore: the archive")
    p.add_argument("dest", help="save: the archive; restore: the sweep directory")
    args = p.parse_args(argv)
    try:
        written, kept = copy_results(args.source, args.dest, replace=args.action == "save")
    except (ValueError, OSError) as exc:
        print(f"sweep_results.py: {exc}", file=sys.stderr)
        return 2
    print(f"{args.action}: {written} files written to {args.dest}, {kept} already there and kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
