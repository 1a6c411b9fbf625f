"""Check that every number in REPRODUCTION.md's tables is in a committed data file named for that table.

Rule (what "found" means):
  * A table is a run of lines starting with "|" outside code fences. Each table must be preceded, after the
    previous table, by a line `<!-- records: PATH [PATH ...] -->` naming its data files (repository-relative;
    each must exist and lie under docs/reproduction/, or be the paper's values, src/nvcim/reference/paper_curves.csv).
  * Checked: every number in the table's body cells except the first column (the row's key: σ_d, arm name)
    and the header. A number is a token such as 55.49, +3.5, −2.1, 32,324, 1e-3 (thousands commas dropped,
    "−" read as "-").
  * A number t printed with d decimals (exponent form: the decimals of its value) is found when one of the
    table's files holds a number v (any token of its text: CSV cells, Markdown tables, prose) with
    |v − t| ≤ ½·10^(−d), i.e. v rounds to t (a boundary value counts: files themselves hold rounded values).
    Signs count: +3.5 needs a positive v. A CSV file's cells are read one by one ("3,200" there is two numbers).
  * A bound such as "p < 0.001" is not the number 0.001: one line of the files must hold a value beyond it
    (0 ≤ v < 0.001) together with the cell's other numbers (the row's, when the cell holds only counts).
  * Numbers that belong together must be on ONE line of one file (a CSV row, a report line): an estimate and
    its spread or interval ("55.49 ± 4.09", "+7.10 [+4.91, +9.29]") and a count ("2 of 10").
What this does not prove: that a number sits in its row's and column's place. A lone number (e.g. "+3.5"), or
a count whose two integers share a line somewhere (seed lists hold every small integer), passes when the files
hold that value anywhere; the check catches numbers in no file and estimates torn from their intervals.
A number derived by hand (a ratio of two file values, a difference not in a file) therefore fails: put it in
a file (e.g. `nvcim report`'s paired.csv) or in prose, not in a table.

    python scripts/check_records.py [REPRODUCTION.md]     # exit 0: every number found; 1: each miss listed
"""

from __future__ import annotations

import csv
import io
import re
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = ("docs/reproduction/", "src/nvcim/reference/paper_curves.csv")
NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_N = r"[-+−]?\d[\d,]*(?:\.\d+)?"
# numbers that belong together, so one line of a file (a CSV row: mean and CI, k and n) must hold them all:
# "55.49 ± 4.09", "+7.10 [+4.91, +9.29]", "2 of 10"
GROUP = re.compile(rf"{_N}\s*±\s*{_N}|{_N}\s*\[\s*{_N}\s*,\s*{_N}\s*\]|(?<![\d.]){_N}\s+of\s+{_N}")
RECORDS = re.compile(r"^<!--\s*records:\s*(.+?)\s*-->\s*$")
BOUND = re.compile(r"([<>])\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")  # "< 0.001": a bound, not the number 0.001


def numbers(text: str) -> list[tuple[Decimal, int]]:
    """(value, decimals) of every number token in `text` (see the module docstring)."""
    out = []
    for m in NUMBER.finditer(text):
        tok = m.group(0).replace("−", "-").replace(",", "")
        value = Decimal(tok)
        out.append((value, max(0, -value.as_tuple().exponent)))
    return out


def tables(lines: list[str]) -> list[tuple[int, list[str], list[str] | None]]:
    """[(first line number, table lines, record paths or None)] of a Markdown text."""
    out, fenced, pending, i = [], False, None, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            m = RECORDS.match(line.strip())
            if m:
                pending = m.group(1).split()
            elif line.lstrip().startswith("|"):  # a table indented inside a list item is a table too
                j = i
                while j < len(lines) and lines[j].lstrip().startswith("|"):
                    j += 1
                out.append((i + 1, lines[i:j], pending))
                pending, i = None, j
                continue
        i += 1
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def check(md_path: Path, root: Path = ROOT) -> list[str]:
    """Problems found (empty: every number of every table is in its files)."""
    problems, cache = [], {}
    for start, tlines, paths in tables(md_path.read_text(encoding="utf-8").splitlines()):
        if not paths:
            problems.append(f"{md_path.name}:{start}: table has no '<!-- records: FILE ... -->' line above it")
            continue
        if paths == ["configuration"]:
            continue
        lines_of: list[list[Decimal]] = []
        for p in paths:
            if not _allowed(root, p):
                problems.append(f"{md_path.name}:{start}: {p} is not a committed record (docs/reproduction/ or "
                                "the paper's values)")
                continue
            if p not in cache:
                f = root / p
                cache[p] = _record_lines(f) if f.is_file() else None
            if cache[p] is None:
                problems.append(f"{md_path.name}:{start}: records file {p} does not exist")
            else:
                lines_of.extend(cache[p])
        values = sorted({v for ln in lines_of for v in ln})
        for k, line in enumerate(tlines[2:], start=start + 2):
            for cell in _cells(line)[1:]:
                bounds = [(m.group(1), numbers(m.group(2))[0][0]) for m in BOUND.finditer(cell)]
                if bounds:  # "< 0.001": a value beyond the bound, on one line with the cell's (else row's) numbers
                    plain = BOUND.sub(" ", cell)
                    beside = numbers(plain) if any(d for _, d in numbers(plain)) else \
                        [n for c in _cells(line)[1:] for n in numbers(BOUND.sub(" ", c))]
                    for op, b in bounds:
                        if not any(_all_on(ln, beside) and any(0 <= v < b if op == "<" else v > b for v in ln)
                                   for ln in lines_of):
                            problems.append(f"{md_path.name}:{k}: no line of {', '.join(paths)} holds a value "
                                            f"{op} {b} beside {' '.join(str(t) for t, _ in beside) or 'nothing'} "
                                            f"(in '{cell}')")
                    cell = plain
                groups = [numbers(m.group(0)) for m in GROUP.finditer(cell.replace("*", ""))]
                missing = False
                for t, d in numbers(cell):
                    tol = _tol(d)
                    if not any(abs(v - t) <= tol for v in _near(values, t, tol)):
                        problems.append(f"{md_path.name}:{k}: {t} (in '{cell}') is in none of {', '.join(paths)}")
                        missing = True
                for group in [] if missing else groups:
                    if not any(_all_on(ln, group) for ln in lines_of):
                        shown = " ".join(str(t) for t, _ in group)
                        problems.append(f"{md_path.name}:{k}: {shown} (in '{cell}') are not on one line of "
                                        f"{', '.join(paths)}: each is somewhere, not together")
    return problems


def _allowed(root: Path, p: str) -> bool:
    """Whether a records path lies under docs/reproduction/ (resolved: "docs/reproduction/../x" does not) or is the
    paper's values."""
    f = (root / p).resolve()
    return f.is_relative_to((root / ALLOWED[0]).resolve()) or f == (root / ALLOWED[1]).resolve()


def _tol(d: int) -> Decimal:
    return Decimal(5) * Decimal(10) ** (-d - 1)


def _all_on(line: list[Decimal], want: list[tuple[Decimal, int]]) -> bool:
    return all(any(abs(v - t) <= _tol(d) for v in line) for t, d in want)


def _record_lines(f: Path) -> list[list[Decimal]]:
    """The numbers of each line of a records file; a CSV's cells are read one by one (so adjacent cells such as
    "3,200,7" are 3, 200 and 7, not the thousands-separated 3200 and 7)."""
    text = f.read_text(encoding="utf-8")
    if f.suffix == ".csv":
        return [[v for cell in row for v, _ in numbers(cell.replace(",", " "))] for row in csv.reader(io.StringIO(text))]
    return [[v for v, _ in numbers(line)] for line in text.splitlines()]


def _near(values: list[Decimal], t: Decimal, tol: Decimal) -> list[Decimal]:
    """The values within tol of t (values sorted: a bisection, not a scan)."""
    import bisect

    return values[bisect.bisect_left(values, t - tol):bisect.bisect_right(values, t + tol)]


def main(argv: list[str]) -> int:
    md = Path(argv[0]) if argv else ROOT / "REPRODUCTION.md"
    problems = check(md)
    for p in problems:
        print(p)
    if not problems:
        print(f"{md.name}: every number of every table is in its records")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
