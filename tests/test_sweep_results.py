"""scripts/sweep_results.py: a sweep's finished results saved without weights and restored, so that a resumed
sweep runs only the unfinished cells and `nvcim report` reads the restored ones; refusals before writing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nvcim.report import scan_results, write_report
from nvcim.sweep import run_sweep, validate_spec
from nvcim.sweep.runner import plan

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sweep_results.py"
SPEC = {
    "name": "archive-test", "models": ["tiny"], "datasets": ["mnist5k"], "methods": ["vanilla", "noise_injection"],
    "sigmas": [0.2], "seeds": [0, 1],
    "train": {"epochs": 1, "limit": 64, "batch_size": 32, "val_runs": 0, "select": "clean", "device": "cpu"},
    "eval": {"runs": 2}, "resources": {"threads_per_cell": 1},
}


def script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    spec = validate_spec(SPEC)
    assert run_sweep(spec, out, progress=False).exit_code == 0
    return spec, out


def test_save_keeps_results_not_weights_and_restore_resumes_only_unfinished(swept, tmp_path):
    spec, out = swept
    # one cell "unfinished": its result is damaged, so it is not done and must not be archived
    unfinished = "tiny-w1/mnist5k/noise_injection/s0.20/seed1"
    damaged = tmp_path / "damaged"
    for rel, data in tree(out).items():
        (damaged / rel).parent.mkdir(parents=True, exist_ok=True)
        (damaged / rel).write_bytes(data)
    result = damaged / "cells" / unfinished / "result.json"
    result.write_bytes(result.read_bytes()[:100])

    archive = tmp_path / "archive"
    r = script("save", damaged, archive)
    assert r.returncode == 0, r.stderr
    saved = tree(archive)
    assert "spec.json" in saved
    assert not any("checkpoint" in k for k in saved)  # no weights
    assert {Path(k).name for k in saved if k.startswith("cells/")} == {"cell.json", "result.json"}
    assert not any(unfinished in k for k in saved)
    assert len([k for k in saved if k.endswith("result.json")]) == 3

    restored = tmp_path / "restored"
    r = script("restore", archive, restored)
    assert r.returncode == 0, r.stderr
    _, todo, done, _ = plan(spec, restored)
    assert [c.id for c in todo] == [unfinished] and len(done) == 3
    summary = run_sweep(spec, restored, progress=False)
    assert summary.exit_code == 0 and summary.ok == [unfinished]
    # the resumed cell is the uninterrupted sweep's cell, bit for bit (its per-run accuracies)
    again = json.loads((restored / "cells" / unfinished / "result.json").read_text())
    first = json.loads((out / "cells" / unfinished / "result.json").read_text())
    assert again["results"][0]["per_run_accuracy"] == first["results"][0]["per_run_accuracy"]
    # a report reads restored cells, which have no checkpoint
    write_report(scan_results(restored), tmp_path / "report")
    summary_csv = (tmp_path / "report" / "summary.csv").read_text()
    assert "noise" in summary_csv and "vanilla" in summary_csv

    # saving again into the archive adds the newly finished cell; restoring again keeps what is there
    assert script("save", restored, archive).returncode == 0
    assert any(unfinished in k for k in tree(archive))
    before = tree(restored)
    r = script("restore", archive, restored)
    assert r.returncode == 0 and tree(restored) == before and "0 file(s) written" in r.stdout


def test_restore_never_overwrites_and_refusals_write_nothing(swept, tmp_path):
    spec, out = swept
    archive = tmp_path / "archive"
    assert script("save", out, archive).returncode == 0
    target = tmp_path / "target"
    assert script("restore", archive, target).returncode == 0
    mine = target / "cells" / "tiny-w1/mnist5k/vanilla/seed0" / "result.json"
    mine.write_text(mine.read_text() + " ")  # the sweep directory's own copy now differs from the archive's
    kept = mine.read_bytes()
    assert script("restore", archive, target).returncode == 0
    assert mine.read_bytes() == kept

    other = dict(SPEC, name="another")
    other_dir = tmp_path / "other"
    assert run_sweep(validate_spec(dict(other, methods=["vanilla"], seeds=[0])), other_dir,
                     progress=False).exit_code == 0
    for args in (("restore", archive, other_dir), ("save", out, other_dir), ("save", tmp_path / "nope", archive)):
        before = tree(other_dir)
        r = script(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert tree(other_dir) == before
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    r = script("save", out, stranger)
    assert r.returncode == 2 and "neither an archive" in r.stderr and tree(stranger) == {"notes.txt": b"mine"}
    before = tree(out)
    r = script("save", out, out / "archive")  # inside the sweep: its report would read every result twice
    assert r.returncode == 2 and "is inside" in r.stderr and tree(out) == before


def test_a_cell_without_its_definition_is_neither_archived_nor_trusted(swept, tmp_path):
    """A done cell whose cell.json is gone (an interrupted copy, a hand edit) is not archived, and a sweep refuses
    it rather than counting a result it cannot check against the spec."""
    spec, out = swept
    src = tmp_path / "src"
    for rel, data in tree(out).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    cell = "tiny-w1/mnist5k/vanilla/seed0"
    (src / "cells" / cell / "cell.json").unlink()
    r = script("save", src, tmp_path / "archive")
    assert r.returncode == 0 and "1 done cell(s) have no cell.json" in r.stdout
    assert not (tmp_path / "archive" / "cells" / cell).exists()
    with pytest.raises(ValueError, match=f"first: {cell}, its cell.json is missing or unreadable"):
        run_sweep(spec, src, progress=False)


def test_restore_keeps_a_cell_directory_that_is_there_and_save_refuses_a_sweep_directory(swept, tmp_path):
    spec, out = swept
    archive = tmp_path / "archive"
    assert script("save", out, archive).returncode == 0
    target = tmp_path / "target"
    cell = "tiny-w1/mnist5k/vanilla/seed1"
    (target / "cells" / cell).mkdir(parents=True)
    (target / "spec.json").write_bytes((out / "spec.json").read_bytes())
    (target / "cells" / cell / "failed.json").write_text("{}")  # the sweep's own (failed) cell
    r = script("restore", archive, target)
    assert r.returncode == 0 and "1 cell(s) already in" in r.stdout
    assert sorted(p.name for p in (target / "cells" / cell).iterdir()) == ["failed.json"]
    # save typed for restore: the destination is a sweep directory (checkpoints, a lock), never written
    before = tree(out)
    r = script("save", archive, out)
    assert r.returncode == 2 and "did you mean restore" in r.stderr and tree(out) == before


def test_a_refusal_writes_nothing_even_when_found_late(swept, tmp_path):
    spec, out = swept
    archive = tmp_path / "archive"
    assert script("save", out, archive).returncode == 0
    (archive / "cells" / "tiny-w1/mnist5k/vanilla/seed1" / "result.json").unlink()
    (archive / "cells" / "tiny-w1/mnist5k/vanilla/seed1" / "result.json").mkdir()  # the last cell's target
    before = tree(archive)
    r = script("save", out, archive)
    assert r.returncode == 2 and "is not a file" in r.stderr and tree(archive) == before


def test_save_to_a_file_name_is_refused(swept, tmp_path):
    """`save DIR arch.tar.gz` wrote a directory named arch.tar.gz (README and usage said "ARCHIVE")."""
    _, out = swept
    r = script("save", out, tmp_path / "arch.tar.gz")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "an archive is a directory" in r.stderr and str(tmp_path / "arch") in r.stderr
    assert not (tmp_path / "arch.tar.gz").exists()
