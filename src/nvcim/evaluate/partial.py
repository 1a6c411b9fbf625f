"""The finished pieces of an interrupted `nvcim eval` (this module owns their format): OUT.partial/ beside the output
keeps one file per finished Monte Carlo evaluation (a cell of the device-model matrix), so the same command run again
takes them instead of evaluating them again, and ends with the results an uninterrupted run writes (every chip is
drawn from the seed, so a piece is exactly what evaluating it again would give).

    partial = PartialResults.beside(out)   # OUT.partial/ (created on the first put); ValueError (one line) if a
                                           # file, a symlink or an unwritable directory is there
    res = partial.get(key)                 # the MCResult saved under `key` by an earlier run, or None (absent;
                                           # damaged: one warning, and the evaluation runs again)
    partial.put(key, res)                  # atomically, replacing nvcim's own piece (a damaged one too); a write
                                           # that fails is a warning (this run goes on, without a resume point)
    partial.remove()                       # once the output is written: nvcim's pieces, then the folder if empty

`key` is a JSON-able dict naming everything the result depends on (checkpoint and data-file fingerprints, device,
chips, seed, flags, `code_fingerprint()` of nvcim, its plugins and torch): a piece whose key differs in anything is
never taken, and only pieces an earlier run left are taken (two identical evaluations in one run are both done).
A piece is
{"format": "nvcim-eval-partial", "version": 1, "key": {...}, "result": MCResult.to_dict()}, named
piece-<first 16 hex digits of the sha256 of the key's canonical JSON>.json.

A regular file of that name in the pieces' folder is nvcim's own: one that cannot be read, does not hold the key its
name comes from, or holds numbers no evaluation gives (an accuracy outside [0, 100] or not finite, a mean that is not
that of its chips' accuracies: `implausible`) is damaged (a kill mid-write by another tool, a full disk, an edit): it
is never taken, the evaluation runs again and its piece replaces the damaged one, and `remove` deletes it with the
others. Anything else in that folder (other names, symlinks, folders) is the user's: never replaced nor deleted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

from nvcim.evaluate.results import MCResult, write_results_json
from nvcim.evaluate.stats import accuracy_ci, summarize

FORMAT, VERSION = "nvcim-eval-partial", 1
SUFFIX = ".partial"
PIECE_NAME = re.compile(r"piece-[0-9a-f]{16}\.json")  # the name `_path` gives a piece


def code_fingerprint() -> str:
    """sha256 (hex) of the code a result depends on: every .py file of the nvcim package, the plugins loaded (their
    files; for a module name, its top-level package's .py files) and the torch version, so that a piece of other code
    is never taken."""
    import torch

    import nvcim
    from nvcim import plugins

    h = hashlib.sha256(torch.__version__.encode())
    root = Path(nvcim.__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    h.update((plugins.fingerprint() or "").encode())
    return h.hexdigest()


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)


class PartialResults:
    """The pieces kept in one directory (module docstring)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.taken = 0  # pieces get() returned: evaluations this run did not repeat
        self._earlier = {p.name for p in self.dir.glob("piece-*.json")} if self.dir.is_dir() else set()
        self._broken = False  # a put failed: no more pieces this run
        self._mine: set[str] = set()  # the pieces this run's evaluation looked up or wrote

    @classmethod
    def beside(cls, out) -> "PartialResults":
        out = Path(out)
        d = out.with_name(out.name + SUFFIX)
        what = ("a symlink" if d.is_symlink() else "a file" if d.exists() and not d.is_dir()
                else "a directory you cannot write" if d.is_dir() and not os.access(d, os.W_OK | os.X_OK) else None)
        if what:
            raise ValueError(f"{d} is {what}, where nvcim eval keeps the finished pieces of an interrupted run: move "
                             "it away, or choose another output")
        return cls(d)

    def _path(self, key: Mapping[str, Any]) -> Path:
        return self.dir / f"piece-{hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]}.json"

    @staticmethod
    def _ours(path: Path) -> bool:
        """Whether `path` (in the pieces' folder) is a file nvcim wrote there: a regular file with a piece's name, or
        the temporary file of a write a kill interrupted."""
        return path.is_file() and not path.is_symlink() and (
            bool(PIECE_NAME.fullmatch(path.name)) or (path.name.startswith(".piece-") and path.name.endswith(".tmp")))

    def _load(self, path: Path, key: Mapping[str, Any]) -> tuple[MCResult | None, str]:
        """The result the piece at `path` holds for `key`, or (None, why it is damaged)."""
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"not readable JSON: {type(exc).__name__}"
        if not (isinstance(d, dict) and d.get("format") == FORMAT and d.get("version") == VERSION
                and isinstance(d.get("key"), dict) and isinstance(d.get("result"), dict)):
            return None, "not in the format of a piece"
        try:
            if _canonical(d["key"]) != _canonical(key):
                return None, "it holds another evaluation than its name says"
            result = MCResult.from_dict(d["result"])
        except (KeyError, TypeError, ValueError) as exc:
            return None, f"its result cannot be read: {type(exc).__name__}"
        why = implausible(result)
        return (None, why) if why else (result, "")

    def get(self, key: Mapping[str, Any]) -> MCResult | None:
        path = self._path(key)
        self._mine.add(path.name)
        if path.name not in self._earlier or not self._ours(path):  # only what an earlier run left, and nvcim's
            return None
        result, why = self._load(path, key)
        if result is None:
            warnings.warn(f"{path} is nvcim's piece of an interrupted run but damaged ({why}): that evaluation runs "
                          "again and replaces it")
            return None
        self.taken += 1
        return result

    def put(self, key: Mapping[str, Any], result: MCResult) -> None:
        path = self._path(key)
        self._mine.add(path.name)
        if self._broken:
            return
        if (path.exists() or path.is_symlink()) and not self._ours(path):  # a symlink or a folder: never replaced
            warnings.warn(f"{path} is not nvcim's: this evaluation is not kept for a resume (move that file away)")
            return
        try:  # atomically: an existing piece of that name (nvcim's own, damaged or not) is replaced whole
            self.dir.mkdir(parents=True, exist_ok=True)
            write_results_json(path, {"format": FORMAT, "version": VERSION, "key": dict(key), "result": result})
        except OSError as exc:  # the evaluation goes on; only the resume point is lost
            self._broken = True
            warnings.warn(f"cannot keep finished evaluations in {self.dir} ({exc.strerror or exc}): this run goes on, "
                          "but an interruption would start it again")

    def remove(self) -> None:
        """Delete this evaluation's pieces (damaged ones too), temporaries, and the directory once empty. Pieces of
        another evaluation written to the same output (an interrupted run with other flags) are its resume points:
        kept, with a note; anything not nvcim's is kept (with a warning)."""
        if self.dir.is_symlink() or not self.dir.is_dir():
            return
        others, kept = [], 0
        try:
            for p in sorted(self.dir.iterdir()):
                if not self._ours(p):
                    others.append(p.name)
                elif PIECE_NAME.fullmatch(p.name) and p.name not in self._mine:
                    kept += 1
                else:
                    p.unlink()
            if not others and not kept:
                self.dir.rmdir()
        except OSError as exc:
            warnings.warn(f"cannot remove {self.dir} ({exc.strerror or exc}): delete it by hand")
            return
        if kept:
            warnings.warn(f"{self.dir} keeps {kept} finished piece(s) of another evaluation written to this output (an "
                          "interrupted run with other flags): rerun it to resume, or delete the folder")
        if others:
            warnings.warn(f"{self.dir} also holds {others[:3]}, which are not nvcim's: left there")


def _accuracy(v: Any, missing: bool = False) -> bool:
    """Whether `v` is an accuracy in [0, 100] % (with `missing`: or NaN, a value a result may lack: JSON null)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (missing and math.isnan(v)) or (math.isfinite(v) and 0 <= v <= 100)


def implausible(r: MCResult) -> str | None:
    """Why `r` cannot be a result nvcim computed (None: it can): an accuracy outside [0, 100] % or not finite, chips'
    accuracies that are not their correct counts over the test set, a mean that is not the mean of the accuracies it
    is taken over (every chip's; in target-precision mode the subset chips'), a std, percentile, min, max or CI that
    is not theirs, or chip counts that do not match."""
    if not (isinstance(r.sigma, (int, float)) and math.isfinite(r.sigma) and r.sigma >= 0):
        return f"sigma {r.sigma!r} is not a σ_d >= 0"
    if not (isinstance(r.n_samples, int) and r.n_samples >= 1 and isinstance(r.runs, int) and r.runs >= 1):
        return f"runs {r.runs!r}, n_samples {r.n_samples!r} are not counts >= 1"
    if not _accuracy(r.mean):
        return f"mean {r.mean!r} is not an accuracy in [0, 100] %"
    for name in ("clean_accuracy", "quantized_accuracy", "p1", "p5", "p10", "min", "max"):
        if not _accuracy(getattr(r, name), missing=True):
            return f"{name} {getattr(r, name)!r} is not an accuracy in [0, 100] %"
    if not (len(r.ci95) == 2 and all(_accuracy(c, missing=True) for c in r.ci95)):
        return f"ci95 {list(r.ci95)!r} is not two accuracies in [0, 100] %"
    per_run, correct = r.per_run_accuracy, r.per_run_correct
    if not per_run or len(correct) != len(per_run):
        return f"{len(per_run)} chip accuracies for {len(correct)} correct counts"
    for j, (a, c) in enumerate(zip(per_run, correct)):
        if not (_accuracy(a) and math.isclose(a, 100.0 * c / r.n_samples, rel_tol=1e-9, abs_tol=1e-9)):
            return f"per_run_accuracy[{j}] = {a!r} is not chip {j}'s {c} of {r.n_samples} correct"
    if r.adaptive:  # the mean is over the subset chips (nvcim.evaluate.adaptive)
        values = r.subset_accuracy or [100.0 * c / (r.images_per_chip or math.nan) for c in r.subset_correct]
        chips = len(r.subset_correct)
    else:
        values, chips = per_run, len(per_run)
    if chips != r.runs or not values or not all(isinstance(v, float) and math.isfinite(v) for v in values):
        return f"runs {r.runs} does not match its {chips} chips' accuracies"
    mean = math.fsum(values) / len(values)
    if r.adaptive:  # the control variate's mean is clipped to an accuracy (nvcim.evaluate.adaptive)
        mean = min(max(mean, 0.0), 100.0)
    if not math.isclose(r.mean, mean, rel_tol=1e-9, abs_tol=1e-9):
        return f"mean {r.mean!r} is not the mean of its chips' accuracies ({mean:.6g})"
    return _counts_differ(r) or _spread_differs(r)


def _counts_differ(r: MCResult) -> str | None:
    """Why r's EKL, its count of correct pairs, its non-finite chip count or (target-precision mode) its CI cannot be
    those its chips give (None: they can)."""
    pairs = sum(r.per_run_correct) + sum(r.subset_correct or ())  # the correct (chip, image) pairs EKL may average
    if isinstance(r.ekl_n, bool) or not isinstance(r.ekl_n, int) or not 0 <= r.ekl_n <= pairs:
        return f"ekl_n {r.ekl_n!r} is not a count of correct pairs in 0..{pairs}"
    ekl = r.ekl if isinstance(r.ekl, (int, float)) and not isinstance(r.ekl, bool) else math.nan
    if (r.ekl_n > 0) != (math.isfinite(ekl) and ekl >= 0):
        return f"ekl {r.ekl!r} does not go with its {r.ekl_n} correct pairs (a mean of -log p over them, >= 0)"
    if isinstance(r.nonfinite_runs, bool) or not isinstance(r.nonfinite_runs, int) \
            or not 0 <= r.nonfinite_runs <= r.chips_scored:
        return f"nonfinite_runs {r.nonfinite_runs!r} is not a count of its {r.chips_scored} chips"
    if r.adaptive and not (isinstance(r.images_per_chip, int) and 1 <= r.images_per_chip <= r.n_samples):
        return f"images_per_chip {r.images_per_chip!r} is not a count of the {r.n_samples} test images"
    if r.adaptive and r.full_set_chips is not None and r.full_set_chips != len(r.per_run_correct):
        return f"full_set_chips {r.full_set_chips!r} is not its {len(r.per_run_correct)} full-set chips"
    half = r.ci_half_width
    if r.adaptive and isinstance(half, (int, float)) and math.isfinite(half):
        if half < 0 or any(not math.isclose(c, w, rel_tol=1e-9, abs_tol=1e-9)
                           for c, w in zip(r.ci95, accuracy_ci(r.mean, half))):
            return f"ci95 {list(r.ci95)!r} is not the mean ± its half-width {half!r}"
    return None


def _spread_differs(r: MCResult) -> str | None:
    """Why r's std, percentiles, min / max (and, at a fixed chip count, CI) are not those of its chips' accuracies
    (those of the full-set chips in target-precision mode, whose CI is Stein's and not recomputed here)."""
    want = summarize(r.per_run_correct, r.n_samples, 0.0, 0)
    names = ("std", "p1", "p5", "p10", "min", "max")
    for name in names if r.adaptive else (*names, "ci95"):
        have, should = getattr(r, name), want[name]
        pairs = zip(have, should) if name == "ci95" else [(have, should)]
        for h, w in pairs:
            if r.adaptive and name in ("p1", "p5", "p10") and math.isnan(h):
                continue  # left out: too few full-set chips for this percentile (nvcim.evaluate.adaptive)
            if not (math.isnan(h) and math.isnan(w)) and not math.isclose(h, w, rel_tol=1e-9, abs_tol=1e-9):
                shown = (list(have), list(should)) if name == "ci95" else (have, should)
                return f"{name} {shown[0]!r} is not that of its chips' accuracies ({shown[1]!r})"
    return None
