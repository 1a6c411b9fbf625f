"""`nvcim train --out DIR` and its training state: an interrupted run resumes from DIR.train-state, a state of another
configuration is refused, two runs never write one DIR (DIR.train-state.lock), and a state a kill left after DIR was
written is removed by the next run (nvcim.io.locks, nvcim.train.resume.left_by_finished_run)."""

from __future__ import annotations

import shutil

import pytest
import torch

import nvcim.train.loop as loop
from helpers import Interrupted, run_cli, run_cli_err, snapshot, stop_after
from nvcim.io.train_state import RECORD_FILE


def test_cli_resumes_and_refuses_another_configuration(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--model", "tiny", "--dataset", "mnist5k", "--limit", "64", "--epochs", "3", "--batch-size",
            "16", "--val-runs", "2", "--method", "noise_injection", "--sigma", "0.2", "--out", "run"]
    undo = stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_cli(argv, capsys)
    undo()
    assert (tmp_path / "run.train-state" / RECORD_FILE).is_file() and not (tmp_path / "run").exists()
    before = snapshot(tmp_path)
    rc, err = run_cli_err([*argv[:8], "4", *argv[9:]], capsys)  # --epochs 4
    assert rc == 2 and len(err) == 1 and "another configuration" in err[0] and "epochs" in err[0]
    assert snapshot(tmp_path) == before
    rc, out, _ = run_cli(argv, capsys)
    assert rc == 0 and "resumed after epoch 1" in out
    assert not (tmp_path / "run.train-state").exists() and (tmp_path / "run" / "config.json").is_file()
    ref = tmp_path / "ref"
    rc, _, _ = run_cli([*argv[:-1], str(ref)], capsys)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "run" / "model.safetensors"), load_file(ref / "model.safetensors")
    assert rc == 0 and all(torch.equal(a[k], b[k]) for k in a)


CLI_ARGV = ["train", "--model", "tiny", "--dataset", "mnist5k", "--limit", "64", "--epochs", "2", "--batch-size", "16",
            "--val-runs", "2", "--method", "noise_injection", "--sigma", "0.2", "--out"]


def test_two_cli_runs_never_write_one_output(tmp_path, capsys, monkeypatch):
    """While one `nvcim train --out DIR` runs (it holds DIR.train-state.lock), a second is refused in one line and
    writes nothing; the lock file goes when the run ends; a file of that name nvcim did not write is left alone."""
    from nvcim.io.locks import LOCK_MARK, output_lock

    monkeypatch.chdir(tmp_path)
    lock = tmp_path / "deep" / "run.train-state.lock"
    with output_lock(lock, "--out deep/run"):
        assert lock.read_bytes() == LOCK_MARK
        rc, err = run_cli_err([*CLI_ARGV, "deep/run"], capsys)
        assert rc == 2 and len(err) == 1 and "in use by another running process" in err[0]
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "run.train-state.lock"]
    assert not (tmp_path / "deep").exists()  # the lock's directories, created for it and left empty, are gone
    rc, err = run_cli_err([*CLI_ARGV, "deep/run", "--model", "nope"], capsys)  # bad input: nothing is left behind
    assert rc == 2 and not (tmp_path / "deep").exists()
    rc, _, _ = run_cli([*CLI_ARGV, "run"], capsys)
    assert rc == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    for text in ("my notes", ""):  # a user's file, even an empty one, is not nvcim's lock
        (tmp_path / "mine.train-state.lock").write_text(text)
        rc, err = run_cli_err([*CLI_ARGV, "mine"], capsys)
        assert rc == 2 and len(err) == 1 and "not nvcim's lock file" in err[0]
        assert (tmp_path / "mine.train-state.lock").read_text() == text and not (tmp_path / "mine").exists()
    (tmp_path / "link.train-state.lock").symlink_to(tmp_path / "target")  # never followed, never removed
    rc, err = run_cli_err([*CLI_ARGV, "link"], capsys)
    assert rc == 2 and len(err) == 1 and "cannot create the lock file" in err[0]
    assert (tmp_path / "link.train-state.lock").is_symlink() and not (tmp_path / "target").exists()
    (tmp_path / "afile").write_text("x")  # the path's own problem is named, as before the lock existed
    rc, err = run_cli_err([*CLI_ARGV, "afile/run"], capsys)
    assert rc == 2 and len(err) == 1 and "afile is a file" in err[0]


def test_cli_removes_the_state_a_kill_left_after_the_checkpoint(tmp_path, capsys, monkeypatch):
    """train() writes the checkpoint, then removes the state: a kill between the two leaves a stale state, which the
    next run of that command removes (it is nvcim's own); the state of another configuration is kept."""
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(loop, "remove_train_state", lambda path: None)  # as if killed right after the checkpoint
        rc, _, _ = run_cli([*CLI_ARGV, "run"], capsys)
    assert rc == 0 and (tmp_path / "run.train-state" / RECORD_FILE).is_file()
    rc, _, err = run_cli([*CLI_ARGV, "run"], capsys)
    assert rc == 2 and "removed run.train-state, left by the run that wrote run" in err
    assert "already holds this training's finished checkpoint" in err and not (tmp_path / "run.train-state").exists()
    for extra in (["--seed", "1"], []):  # states newer than the checkpoint (an --overwrite run killed) stay,
        undo = stop_after(monkeypatch, 1)  # of another configuration or of this one
        with pytest.raises(Interrupted):
            run_cli([*CLI_ARGV, "run", "--overwrite", *extra], capsys)
        undo()
        rc, err = run_cli_err([*CLI_ARGV, "run", *extra], capsys)
        assert rc == 2 and (tmp_path / "run.train-state" / RECORD_FILE).is_file() and "removed" not in " ".join(err)
        shutil.rmtree(tmp_path / "run.train-state")


def test_the_state_path_of_dot_and_a_trailing_slash(tmp_path, monkeypatch):
    """--out . failed with "PosixPath('.') has an empty name"; with --out k/ an interrupt's message left out where
    the state is kept (it looked for k/.train-state, the state is k.train-state) (review finding)."""
    import argparse

    from nvcim.cli import _resume_hint
    from nvcim.cli.train import train_state_path

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert train_state_path(".") == tmp_path.resolve() / "here.train-state"
    assert train_state_path("k/") == train_state_path("k") == type(tmp_path)("k.train-state")
    (tmp_path / "here" / "k.train-state").mkdir()
    assert "kept in k.train-state/" in _resume_hint(argparse.Namespace(command="train", out="k/"))
