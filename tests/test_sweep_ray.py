"""Ray backend of nvcim sweep: same layout and bitwise-same results as the local backend, and the
driver-writes path used when the workers cannot see the sweep directory."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from nvcim import sweep
from nvcim.sweep.backends import ray as ray_backend
from nvcim.sweep import expand, run_sweep, validate_spec

SPEC = {
    "name": "ray-test",
    "models": ["tiny"],
    "datasets": ["mnist5k"],
    "methods": ["noise_injection", "ovf"],
    "sigmas": [0.3],
    "seeds": [0, 1],
    "betas": [0.1, 0.001],
    "train": {"epochs": 1, "limit": 96, "batch_size": 32, "val_runs": 0, "select": "clean", "device": "cpu"},
    "eval": {"runs": 3, "val_runs": 2},
    "resources": {"threads_per_cell": 1, "cpus_per_cell": 1},
}


def _results(out: Path) -> dict:
    found = {}
    for f in sorted((out / "cells").rglob(sweep.RESULT_FILE)):
        d = json.loads(f.read_text())
        bs = d["cell"]["beta_search"]
        found[d["cell"]["id"]] = ([(r["sigma"], r["per_run_accuracy"], r["ekl"]) for r in d["results"]],
                                  bs and bs["chosen_beta"], bs and [c["val_mean"] for c in bs["candidates"]],
                                  d["checkpoint"])
    return found


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert run_sweep(validate_spec(SPEC), out, progress=False).exit_code == 0
    return out


@pytest.mark.ray
def test_ray_backend_matches_local(tmp_path, local_ref):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'nvcim[ray]')")
    out = tmp_path / "ray"
    summary = run_sweep(validate_spec(SPEC), out, backend="ray", workers=2, progress=False)
    assert summary.exit_code == 0 and len(summary.ok) == 4
    assert _files(out) == _files(local_ref)
    assert _results(out) == _results(local_ref)
    assert not (out / sweep.TOKEN_FILE).exists()


def test_driver_writes_when_the_directory_is_not_shared(tmp_path, local_ref):
    """A task that cannot see the driver's token runs in a temp dir and returns the files."""
    spec = validate_spec(SPEC)
    out = tmp_path / "out"
    sweep.prepare_out_dir(spec, out)
    (out / sweep.TOKEN_FILE).write_text("driver-token")
    for cell in expand(spec):
        reply = ray_backend._ray_cell(cell.to_dict(), str(out), "another-token", 1)
        assert reply["files"] and "result.json" in reply["files"] and reply["summary"]["status"] == "ok"
        assert not sweep.cell_dir(out, cell.id).exists()  # nothing written by the "remote" task
        ray_backend._write_returned(out, cell.id, reply["files"])
    assert _files(out) == _files(local_ref)
    assert _results(out) == _results(local_ref)
    # a cell returned again (a rerun) replaces nvcim's files, keeps the user's, leaves nothing hidden behind
    d = sweep.cell_dir(out, cell.id)
    (d.parent / f".{d.name}.tmp-k1lled_x").mkdir()  # the leftover of a driver killed mid-write (mkdtemp's 8)
    mine = d.parent / f".{d.name}.tmp-mynotes"  # a user's hidden directory of a like name: never nvcim's to delete
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (d / "checkpoint" / "model.safetensors").write_bytes(b"old weights")
    (d / "notes.txt").write_text("mine")
    ray_backend._write_returned(out, cell.id, {**reply["files"], "extra.txt": b"x"})
    assert [p.name for p in d.parent.iterdir() if p.name.startswith(".")] == [mine.name]
    assert (mine / "notes.txt").read_text() == "precious"
    assert (d / "extra.txt").read_bytes() == b"x" and (d / "result.json").stat().st_mode & 0o777 == 0o644
    assert (d / "notes.txt").read_text() == "mine"
    assert (d / "checkpoint" / "model.safetensors").read_bytes() == reply["files"]["checkpoint/model.safetensors"]
    # an earlier version's swap killed between its two renames: the cell's old directory is put back first
    old = d.parent / f".{d.name}.old-k1lled_x"
    os.replace(d, old)
    ray_backend._write_returned(out, cell.id, reply["files"])
    assert not old.exists() and (d / "notes.txt").read_text() == "mine"
    assert _results(out) == _results(local_ref)


def test_missing_ray_is_a_one_line_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, find_spec finds nothing
    spec = validate_spec(copy.deepcopy(SPEC))
    with pytest.raises(ValueError, match=r"pip install 'nvcim\[ray\]'"):
        run_sweep(spec, tmp_path / "x", backend="ray", progress=False)
    assert not (tmp_path / "x").exists()  # before spec.json, spec.toml, the lock (they were written first)


def test_the_token_file_never_replaces_a_users_file(tmp_path):
    """DIR/.sweep-token: a killed run's token is replaced, a user's file of that name (or a link) is refused and
    kept, and only this run's token is removed at the end (review finding: it was overwritten, then deleted)."""
    token_file = tmp_path / sweep.files.TOKEN_FILE
    token_file.write_text("my precious token\n")
    with pytest.raises(ValueError, match="is not nvcim's token file") as exc:
        ray_backend._write_token(tmp_path)
    assert "\n" not in str(exc.value) and token_file.read_text() == "my precious token\n"
    token_file.unlink()
    (tmp_path / "target").write_text("mine\n")
    token_file.symlink_to(tmp_path / "target")
    with pytest.raises(ValueError, match="is not nvcim's token file"):
        ray_backend._write_token(tmp_path)
    assert (tmp_path / "target").read_text() == "mine\n"
    token_file.unlink()
    token_file.write_text("0" * 32 + "\n")  # a killed run's
    token = ray_backend._write_token(tmp_path)
    assert token_file.read_text() == token + "\n" and token != "0" * 32
    ray_backend._remove_token(tmp_path, "f" * 32)  # not this run's: stays
    assert token_file.exists()
    ray_backend._remove_token(tmp_path, token)
    assert not token_file.exists()
    # checked before anything is written, whatever the backend: a user's file there stops the sweep up front
    token_file.write_text("my precious token\n")
    with pytest.raises(ValueError, match="is not nvcim's token file"):
        sweep.prepare_out_dir(validate_spec(copy.deepcopy(SPEC)), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sweep-token", "target"]


def test_a_failed_ray_start_leaves_no_token(tmp_path, monkeypatch):
    """ray.init failing (no cluster at --address) left DIR/.sweep-token behind."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'nvcim[ray]')")

    def no_cluster(*a, **k):
        raise ConnectionError("no Ray cluster at that address")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ConnectionError):
        run_sweep(validate_spec(copy.deepcopy(SPEC)), tmp_path / "x", backend="ray", address="ray://nowhere:1",
                  progress=False)
    assert not (tmp_path / "x" / sweep.files.TOKEN_FILE).exists()


@pytest.mark.parametrize("workers", [1, 3])
def test_a_local_ray_instance_gets_the_cpus_of_workers_cells(tmp_path, monkeypatch, workers):
    """`--workers 1` (the default) started Ray with every core of the machine: two cells ran at once on a user's shared
    2-core machine, whatever the help said ("caps a local Ray instance's CPUs")."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'nvcim[ray]')")
    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise ConnectionError("stop here")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(ConnectionError):
        run_sweep(validate_spec(copy.deepcopy(SPEC)), tmp_path / "x", backend="ray", workers=workers, progress=False)
    assert seen["num_cpus"] == workers * validate_spec(copy.deepcopy(SPEC)).resources.cpus_per_cell
