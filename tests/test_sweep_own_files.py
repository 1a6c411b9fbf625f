"""Tests for a sweep's handling of files that are not its own and of harmless spec edits (a sweep review, session
34): a user's file in a β cell's checkpoint/ or a candidate's, keep_beta_checkpoints = false, a file where a cell's
folder goes, names too long for the file system, a damaged score.json, reordered seeds, nvcim's spec copy with a
relative device file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from nvcim import sweep
from nvcim.cli import main
from nvcim.sweep import expand, run_sweep, validate_spec
from nvcim.sweep.cells import fmt_beta
from nvcim.sweep.files import scored_candidates

TRAIN = {"epochs": 1, "limit": 96, "batch_size": 32, "val_runs": 0, "select": "clean", "device": "cpu"}
BASE = {"name": "own", "models": ["tiny"], "datasets": ["mnist5k"], "methods": ["ovf"], "sigmas": [0.3],
        "seeds": [0], "betas": [0.1, 0.001], "train": TRAIN, "eval": {"runs": 2, "val_runs": 2},
        "resources": {"threads_per_cell": 1}}


def spec(**changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return validate_spec(raw)


def _cell(out: Path, s) -> Path:
    (c,) = expand(s)
    return sweep.cell_dir(out, c.id)


def _damage(d: Path) -> None:
    """A cell to redo whose checkpoint config is damaged (not by nvcim: its writes are atomic)."""
    (d / "result.json").write_text("{")
    (d / "checkpoint" / "config.json").write_text("{")


def test_a_users_file_in_a_beta_cells_checkpoint_is_never_deleted(tmp_path):
    """Copying the chosen candidate over a damaged checkpoint/ replaced the folder: the user's notes were gone."""
    s = spec()
    assert run_sweep(s, tmp_path, workers=1, progress=False).exit_code == 0
    d = _cell(tmp_path, s)
    _damage(d)
    (d / "checkpoint" / "notes.txt").write_text("mine")
    run_sweep(s, tmp_path, workers=1, progress=False, warn=lambda m: None)
    assert (d / "checkpoint" / "notes.txt").read_text() == "mine"
    failed = json.loads((d / "failed.json").read_text())
    assert "notes.txt" in failed["error"] and "not nvcim's" in failed["error"]


def test_keep_beta_checkpoints_false_removes_only_nvcims_files_and_a_rerun_retrains(tmp_path):
    """The candidates' folders were removed whole (a user's file in one with them), and a cell redone after that
    failed on every rerun: FileNotFoundError of the chosen candidate's checkpoint."""
    assert run_sweep(spec(), tmp_path, workers=1, progress=False).exit_code == 0  # candidates kept
    s = spec(eval={"runs": 2, "val_runs": 2, "keep_beta_checkpoints": False})
    d = _cell(tmp_path, s)
    (d / "beta" / fmt_beta(0.1) / "checkpoint" / "notes.txt").write_text("mine")
    (d / "result.json").unlink()  # redone under keep_beta_checkpoints = false: tested again, then tidied
    warned = []
    assert run_sweep(s, tmp_path, workers=1, progress=False, warn=warned.append, force=True).exit_code == 0
    assert (d / "beta" / fmt_beta(0.1) / "checkpoint" / "notes.txt").read_text() == "mine"
    assert not (d / "beta" / fmt_beta(0.1) / "checkpoint" / "config.json").exists()
    assert not (d / "beta" / fmt_beta(0.001) / "checkpoint").exists()
    assert any("was kept" in w for w in warned)
    _damage(d)
    warned.clear()
    assert run_sweep(s, tmp_path, workers=1, progress=False, warn=warned.append).exit_code == 0
    assert any("training it again" in w for w in warned)
    assert (d / "result.json").is_file() and not (d / "failed.json").exists()
    assert (d / "beta" / fmt_beta(0.1) / "checkpoint" / "notes.txt").read_text() == "mine"


def test_turning_keep_beta_checkpoints_off_leaves_finished_cells_done(tmp_path):
    assert run_sweep(spec(), tmp_path, workers=1, progress=False).exit_code == 0
    off = spec(eval={"runs": 2, "val_runs": 2, "keep_beta_checkpoints": False})
    summary = run_sweep(off, tmp_path, workers=1, progress=False, force=True)
    assert summary.exit_code == 0 and summary.ok == []


def test_reordered_seeds_are_the_same_spec(tmp_path):
    assert run_sweep(spec(seeds=[0, 1], methods=["vanilla"], betas=None), tmp_path, workers=1,
                     progress=False).exit_code == 0
    again = run_sweep(spec(seeds=[1, 0], methods=["vanilla"], betas=None), tmp_path, workers=1, progress=False)
    assert again.exit_code == 0 and again.ok == []


@pytest.mark.parametrize("case", ["file in the way", "name too long"])
def test_a_cell_folder_that_cannot_be_made_is_refused_before_anything_is_written(tmp_path, capsys, case):
    """A user's file where a cell's folder goes crashed the whole sweep part-way (raw 'Not a directory'), and
    sigmas = [1e300] made a 303-digit folder name: 'File name too long' after spec.json and the lock were written."""
    out = tmp_path / "out"
    raw = {**copy.deepcopy(BASE), "methods": ["noise_injection"], "betas": None}
    if case == "file in the way":
        (out / "cells" / "tiny-w1" / "mnist5k").mkdir(parents=True)
        (out / "cells" / "tiny-w1" / "mnist5k" / "noise_injection").write_text("mine")
    else:
        raw["sigmas"] = [1e300]
    (tmp_path / "s.json").write_text(json.dumps(raw))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["sweep", str(tmp_path / "s.json"), "--out", str(out), "--quiet", "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ("move it away" in err if case == "file in the way" else "more than a file name" in err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_damaged_score_is_said_and_not_counted_as_scored(tmp_path):
    s = spec()
    assert run_sweep(s, tmp_path, workers=1, progress=False).exit_code == 0
    d = _cell(tmp_path, s)
    (d / "result.json").unlink()
    (d / "beta" / fmt_beta(0.1) / "score.json").write_text('{"beta": 0.1')
    (c,) = expand(s)
    assert scored_candidates(tmp_path, c) == 1
    warned = []
    assert run_sweep(s, tmp_path, workers=1, progress=False, warn=warned.append).exit_code == 0
    assert any("score.json cannot be read as a score" in w for w in warned)


def test_nvcims_spec_copy_with_a_relative_device_file_says_what_to_run(tmp_path, capsys):
    (tmp_path / "devs").mkdir()
    (tmp_path / "devs" / "mine.toml").write_text('variation = "gaussian"\nread_sigma = 0.01\n')
    raw = {**copy.deepcopy(BASE), "methods": ["noise_injection"], "betas": None, "device_models": ["devs/mine.toml"]}
    (tmp_path / "s.toml").write_text("\n".join([
        'name = "own"', 'models = ["tiny"]', 'datasets = ["mnist5k"]', 'methods = ["noise_injection"]',
        "sigmas = [0.3]", "seeds = [0]", 'device_models = ["devs/mine.toml"]',
        "[train]", "epochs = 1", "limit = 96", "batch_size = 32", "val_runs = 0", 'select = "clean"', 'device = "cpu"',
        "[eval]", "runs = 2", "val_runs = 2", "[resources]", "threads_per_cell = 1"]) + "\n")
    assert raw  # (the TOML above is this spec)
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(out), "--dry-run"]) == 0
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(out / "spec.toml"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nvcim's copy of the spec" in err and "spec.json" in err
    assert main(["sweep", str(out / "spec.json"), "--out", str(out), "--quiet"]) == 0


def test_a_spec_path_that_is_a_folder_is_named_so(tmp_path, capsys):
    """'sweep spec DIR does not exist' for a folder that exists (a sweep review)."""
    assert main(["sweep", str(tmp_path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "is a folder: give the file" in capsys.readouterr().err
