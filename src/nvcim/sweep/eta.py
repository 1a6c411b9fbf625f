"""The sweep's remaining-time estimate: cells weighed by what cells of their kind have cost.

    eta = Eta(out, todo, done)         # done: finished cells of earlier runs (their result.json has their time)
    eta.finished(summary)              # each cell this run finishes (run_cell's summary)
    eta.seconds(elapsed)               # None until a cell of this run has finished and one (of any run) was timed

Cells differ in cost by far more than their count says: an OVF cell runs N + 1 forwards a step (≈ 4× a noise
injection cell), a β search trains several models, an ADC device model evaluates ≈ 10× slower. A cell's weight is
the mean wall time per training of finished cells of its kind (model, width, data set, method, device model; this
run's and earlier runs') times its trainings, or, for a kind not seen yet, the mean over every kind seen. The
estimate is the elapsed time scaled by (weight left) / (weight finished this run): the run's own throughput,
parallel workers and a loaded machine included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from nvcim.sweep.cells import Cell, fmt_beta
from nvcim.sweep.files import (RESULT_FILE, SCORE_FILE, TRAIN_STATE_DIR, cell_dir, read_score, saved_epoch,
                               scored_candidates)


def kind(cell: Cell) -> tuple:
    return (cell.model, cell.width, cell.dataset, cell.method, cell.device_model)


def trainings(cell: Cell) -> int:
    """Models a cell trains: one per candidate of a search, else one."""
    return max(1, len(cell.betas or ()))


def recorded_wall(out: Path, cell: Cell) -> float | None:
    """A finished cell's wall time as its result.json records it (None: unreadable or absent)."""
    try:
        rec = json.loads((cell_dir(out, cell.id) / RESULT_FILE).read_text(encoding="utf-8"))
        wall = rec["cell"]["wall_time_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(wall) if isinstance(wall, (int, float)) and math.isfinite(wall) and wall > 0 else None


class Eta:
    def __init__(self, out: Path, todo: Sequence[Cell], done: Sequence[Cell]):
        self._per_training: dict[tuple, list[float]] = {}  # kind → seconds per training of its finished cells
        for c in done:
            if (wall := recorded_wall(out, c)) is not None:
                self._add(c, wall)
        self._left = {c.id: c for c in todo}
        # trainings' worth an earlier run did: a resumed β search's scored candidates, a resumed training's epochs
        self._before = {c.id: done_before(out, c) for c in todo}
        self._scored = {c.id: scored_candidates(out, c) for c in todo if c.betas}  # (not in a cell's wall time)
        self._finished: list[Cell] = []  # finished by this run, ok
        self._failed_s = 0.0  # seconds the cells that failed in this run took (often far less than their weight)

    def _add(self, cell: Cell, wall: float, trained: int | None = None) -> None:
        """Record `cell`'s seconds per training: its wall time over the trainings it holds (`trained`: default all;
        a training resumed from its state counts whole, its earlier part being in the wall time)."""
        self._per_training.setdefault(kind(cell), []).append(wall / max(1, trained or trainings(cell)))

    def finished(self, summary: Mapping) -> None:
        cell = self._left.pop(summary["id"], None)
        if cell is None:
            return
        wall = summary.get("wall_time_s")
        wall = float(wall) if isinstance(wall, (int, float)) and math.isfinite(wall) and wall > 0 else None
        if summary.get("status") != "ok":
            self._failed_s += wall or 0.0
            return
        self._finished.append(cell)
        if wall is not None:  # a resumed search's wall time leaves out the candidates scored by earlier runs
            self._add(cell, wall, trainings(cell) - self._scored.get(cell.id, 0))

    def weight(self, cell: Cell) -> float:
        """Estimated seconds of this run's share of `cell` (1 per training while nothing has been timed): the
        trainings an earlier run did not do (a search's scored candidates and a resumed training's epochs aside;
        at least a tenth of a training: the test)."""
        seen = self._per_training.get(kind(cell))
        if not seen:
            seen = [s for times in self._per_training.values() for s in times] or [1.0]
        return sum(seen) / len(seen) * max(0.1, trainings(cell) - self._before.get(cell.id, 0.0))

    def seconds(self, elapsed: float) -> float | None:
        """Seconds left at this run's pace, or None before a cell of this run has finished (or when none is left).
        The pace counts only what this run did of the cells it finished (an earlier run's part of a resumed cell
        made the run look faster than it is)."""
        if not self._per_training or not self._left:  # no cell timed yet: a weight is no time (nor a failed cell's)
            return None
        done = sum(self.weight(c) for c in self._finished) + self._failed_s
        if done <= 0:
            return None
        return elapsed * sum(self.weight(c) for c in self._left.values()) / done


def done_before(out: Path, cell: Cell) -> float:
    """Trainings' worth of `cell` that earlier runs did and this one keeps: its search's scored candidates, plus
    epoch / epochs of the training state it resumes (the cell's own, or the next unscored candidate's)."""
    scored = scored_candidates(out, cell)
    d = cell_dir(out, cell.id)
    pending = [b for b in cell.betas or () if read_score(d / "beta" / fmt_beta(b) / SCORE_FILE, b) is None]
    state = d / "beta" / fmt_beta(pending[0]) / TRAIN_STATE_DIR if pending else d / TRAIN_STATE_DIR
    saved = saved_epoch(state)
    return scored + (saved[0] / saved[1] if saved else 0.0)
