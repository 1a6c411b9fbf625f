"""The finished pieces of an interrupted `nvcim eval` (this module owns their format): OUT.partial/ beside the output
keeps one file per finished Monte Carlo evaluation (a cell of the device-model matrix), so the same command run again
takes them instead of evaluating them again, and ends with the results an uninterrupted run writes (every chip is
drawn from the seed, so a piece is exactly what evaluating it again would give).

    partial = PartialResults.beside(out)   # OUT.partial/ (created on the first put); ValueError if a file is there
    res = partial.get(key)                 # the MCResult saved under `key`, or None (absent; damaged: a warning)
    partial.put(key, res)                  # atomically; never replacing a file that is not nvcim's piece
    partial.remove()                       # once the output is written: nvcim's pieces, then the folder if empty

`key` is a JSON-able dict naming everything the result depends on (checkpoint fingerprint, device, chips, seed,
data, code version): a piece whose key differs in anything is never taken. A piece is
{"format": "nvcim-eval-partial", "version": 1, "key": {...}, "result": MCResult.to_dict()}, named
piece-<first 16 hex digits of the sha256 of the key's canonical JSON>.json.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

from nvcim.evaluate.results import MCResult, write_results_json

FORMAT, VERSION = "nvcim-eval-partial", 1
SUFFIX = ".partial"


def fingerprint_files(*paths) -> str:
    """sha256 (hex) over the bytes of `paths`, in order: a checkpoint's identity for a piece's key."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)


class PartialResults:
    """The pieces kept in one directory (module docstring)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.taken = 0  # pieces get() returned: evaluations this run did not repeat

    @classmethod
    def beside(cls, out) -> "PartialResults":
        out = Path(out)
        d = out.with_name(out.name + SUFFIX)
        if d.exists() and not d.is_dir():
            raise ValueError(f"{d} is a file, where nvcim eval keeps the finished pieces of an interrupted run: move "
                             "it away")
        return cls(d)

    def _path(self, key: Mapping[str, Any]) -> Path:
        return self.dir / f"piece-{hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]}.json"

    def _read(self, path: Path) -> dict | None:
        """The piece at `path` if it is one of nvcim's (any key), else None."""
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        ok = (isinstance(d, dict) and d.get("format") == FORMAT and d.get("version") == VERSION
              and isinstance(d.get("key"), dict) and isinstance(d.get("result"), dict))
        return d if ok else None

    def get(self, key: Mapping[str, Any]) -> MCResult | None:
        path = self._path(key)
        if not path.is_file():
            return None
        piece = self._read(path)
        result = None
        if piece is not None and _canonical(piece["key"]) == _canonical(key):
            try:
                result = MCResult.from_dict(piece["result"])
            except (KeyError, TypeError, ValueError):
                result = None
        if result is None:
            warnings.warn(f"{path} cannot be used (damaged, or of another evaluation): that evaluation runs again")
            return None
        self.taken += 1
        return result

    def put(self, key: Mapping[str, Any], result: MCResult) -> None:
        path = self._path(key)
        if path.exists() and self._read(path) is None:  # not nvcim's piece: never replaced
            warnings.warn(f"{path} is not nvcim's: this evaluation is not kept for a resume (move that file away)")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_results_json(path, {"format": FORMAT, "version": VERSION, "key": dict(key), "result": result})

    def remove(self) -> None:
        """Delete nvcim's pieces and the directory; anything else there is kept (with a warning)."""
        if not self.dir.is_dir():
            return
        others = []
        for p in sorted(self.dir.iterdir()):
            if p.is_file() and p.name.startswith("piece-") and p.suffix == ".json" and self._read(p) is not None:
                p.unlink()
            else:
                others.append(p.name)
        if others:
            warnings.warn(f"{self.dir} also holds {others[:3]}, which are not nvcim's: left there")
        else:
            self.dir.rmdir()
