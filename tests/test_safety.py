"""Nothing the user did not ask to replace is touched: `nvcim eval` never writes into the checkpoint it
reads (nor --out and --csv into one file), and a checkpoint that does not fit the data set is refused
before anything is downloaded or created. Each refusal: exit 2, one line on stderr, no file changed."""

from __future__ import annotations

import os

import numpy as np
import pytest

import nvcim.data
from nvcim.io.checkpoint import save_checkpoint
from nvcim.core.config import DeviceConfig
from nvcim.models import create_model
from helpers import snapshot as _snapshot, run_cli_err as _run


@pytest.fixture
def ckpt(tmp_path):
    """A 1-channel tiny model on mnist5k (32 test images), as `nvcim train` saves it."""
    return save_checkpoint(tmp_path / "ck", create_model("tiny", 10, 1),
                           data={"name": "mnist5k", "root": None, "val_fraction": 0.1, "limit": 32, "seed": 0},
                           device=DeviceConfig(sigma=0.1))


@pytest.mark.parametrize("outputs", [
    ["--out", "{ck}/config.json"],  # used to replace the checkpoint's config with the results
    ["--out", "{ck}/model.safetensors"],
    ["--csv", "{ck}/config.json"],
    ["--out", "{ck}/results.json"],  # a new file inside the checkpoint
    ["--csv", "{tmp}/elsewhere/../ck/table.csv"],
    ["--out", "{tmp}/link.json"],  # a symbolic link to the checkpoint's config
    ["--out", "{tmp}/hard.json"],  # a hard link of it
    ["--out", "{tmp}/same.json", "--csv", "{tmp}/same.json"],
    ["--out", "{tmp}/same.json", "--csv", "{tmp}/sub/../same.json"],
])
def test_eval_never_writes_into_the_checkpoint_or_twice_into_one_file(tmp_path, ckpt, capsys, outputs):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to(ckpt / "config.json")
    os.link(ckpt / "config.json", tmp_path / "hard.json")
    argv = [a.replace("{ck}", str(ckpt)).replace("{tmp}", str(tmp_path)) for a in outputs]
    before = _snapshot(tmp_path)
    rc, err = _run(["eval", str(ckpt), "--runs", "2", *argv], capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("nvcim eval: error:"), err
    assert ("checkpoint" in err[0]) or ("same file" in err[0]), err
    assert _snapshot(tmp_path) == before


def test_eval_outputs_beside_the_checkpoint_are_fine(tmp_path, ckpt, capsys):
    rc, _ = _run(["eval", str(ckpt), "--runs", "2", "--out", str(tmp_path / "r.json"), "--csv",
                  str(tmp_path / "r.csv")], capsys)
    assert rc == 0 and (tmp_path / "r.json").is_file() and (tmp_path / "r.csv").is_file()


def test_eval_dataset_that_does_not_fit_the_model_downloads_nothing(tmp_path, ckpt, capsys, monkeypatch):
    calls = []

    def fetch(url, dest):
        calls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(nvcim.data.download, "_fetch", fetch)
    before = _snapshot(tmp_path)
    rc, err = _run(["eval", str(ckpt), "--runs", "2", "--dataset", "cifar10", "--data-root", str(tmp_path / "data")],
                   capsys)
    assert rc == 2 and len(err) == 1 and "does not fit" in err[0], err
    assert calls == [] and _snapshot(tmp_path) == before


def test_eval_dataset_of_another_image_size_is_refused_in_one_line(tmp_path, ckpt, capsys):
    # mnist5k is 32x32; 16x16 digits in an npz file ran silently through a pooling model (a crash with a fixed
    # flatten: a new user's finding)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", x_train=rng.integers(0, 256, (20, 16, 16), dtype=np.uint8),
             y_train=np.arange(20) % 10, x_test=rng.integers(0, 256, (10, 16, 16), dtype=np.uint8),
             y_test=np.arange(10) % 10)
    rc, err = _run(["eval", str(ckpt), "--runs", "2", "--dataset", f"npz:{tmp_path / 'small.npz'}"], capsys)
    assert rc == 2 and len(err) == 1 and "16x16 images but the checkpoint's model was built for 32x32" in err[0], err


def test_result_files_follow_the_umask(tmp_path):
    """atomic writes get 0666 less the umask (0644 under the usual 022, 0640 under 027)."""
    import os

    from nvcim.io.files import atomic_write_text

    old = os.umask(0o027)
    try:
        p = atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o640
    p = atomic_write_text(tmp_path / "s.json", "{}")
    assert (p.stat().st_mode & 0o777) == 0o666 & ~old


def test_a_checkpoint_trained_on_a_relative_npz_path_evaluates_from_another_directory(tmp_path, capsys, monkeypatch):
    # `cd /; nvcim eval CK` said "/u8.npz: no such file" for a checkpoint trained on npz:u8.npz (a new user's finding):
    # the file trained on (its absolute path and sha256 are in the checkpoint) is read, under the recorded name
    import json

    rng = np.random.default_rng(0)
    (tmp_path / "work").mkdir()
    np.savez(tmp_path / "work" / "u8.npz", x_train=rng.integers(0, 256, (40, 16, 16), dtype=np.uint8),
             y_train=np.arange(40) % 4, x_test=rng.integers(0, 256, (12, 16, 16), dtype=np.uint8),
             y_test=np.arange(12) % 4)
    monkeypatch.chdir(tmp_path / "work")
    rc, err = _run(["train", "--model", "tiny", "--dataset", "npz:u8.npz", "--epochs", "1", "--val-fraction", "0.25",
                    "--out", str(tmp_path / "ck")], capsys)
    assert rc == 0, err
    monkeypatch.chdir(tmp_path)
    rc, err = _run(["eval", str(tmp_path / "ck"), "--sigma", "0.1", "--runs", "2", "--out", str(tmp_path / "r.json")],
                   capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["dataset"] == "npz:u8.npz"
    before = (tmp_path / "work" / "u8.npz").read_bytes()  # the file read is an input: no output may replace it
    rc, err = _run(["eval", str(tmp_path / "ck"), "--sigma", "0.1", "--runs", "2", "--csv",
                    str(tmp_path / "work" / "u8.npz")], capsys)
    assert rc == 2 and len(err) == 1 and (tmp_path / "work" / "u8.npz").read_bytes() == before, err
    (tmp_path / "work" / "u8.npz").unlink()  # gone: one line saying how npz: paths are read
    rc, err = _run(["eval", str(tmp_path / "ck"), "--sigma", "0.1", "--runs", "2"], capsys)
    assert rc == 2 and len(err) == 1 and "relative to the current directory" in err[0], err
