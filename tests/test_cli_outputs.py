"""`nvcim eval` output paths (nvcim.cli.outputs) and what its CSV says: no output replaces an input (a device-model,
plugin or npz data-set file, a checkpoint of the matrix), the outputs of one command are distinct files (the
matrix's derived heat-map PNG included), every path is checked before any work, a PNG nvcim did not write is never
replaced, and the single-evaluation CSV names the device model and the target-precision mode. Each refusal: exit 2,
one line on stderr, no file changed."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nvcim
import nvcim.cli.eval_matrix
from nvcim.cli import main
from nvcim.core.config import DeviceConfig
from nvcim.evaluate import CSV_COLUMNS
from nvcim.io.checkpoint import save_checkpoint
from nvcim.models import create_model
from helpers import snapshot as _snapshot, run_cli_err as _run


def _ckpt(path):
    """A 1-channel tiny model on mnist5k (32 test images), as `nvcim train` saves it."""
    return save_checkpoint(path, create_model("tiny", 10, 1),
                           data={"name": "mnist5k", "root": None, "val_fraction": 0.1, "limit": 32, "seed": 0},
                           device=DeviceConfig(sigma=0.1))


@pytest.fixture
def work(tmp_path):
    """tmp/ck, tmp/ck2 (checkpoints), tmp/mydev.json (a device-model file), tmp/d.npz (a data-set file)."""
    _ckpt(tmp_path / "ck")
    _ckpt(tmp_path / "ck2")
    (tmp_path / "mydev.json").write_text('{"variation": "gaussian", "stuck_at": [0.01, 0.01]}\n')
    (tmp_path / "d.npz").write_bytes(b"not read: refused first")
    os.link(tmp_path / "mydev.json", tmp_path / "hard.json")
    (tmp_path / "q.png").mkdir()
    return tmp_path


def _refused(work, capsys, argv, *words):
    argv = [a.replace("{tmp}", str(work)) for a in argv]
    before = _snapshot(work)
    rc, err = _run(["eval", *argv], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("nvcim eval: error:"), (rc, err)
    assert all(w in err[0] for w in words), err
    assert _snapshot(work) == before  # nothing written, nothing replaced


# ---- 1. no output is an input ------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["{tmp}/ck", "--device-model", "{tmp}/mydev.json", "--out", "{tmp}/mydev.json"],
    ["{tmp}/ck", "--device-model", "{tmp}/mydev.json", "--csv", "{tmp}/mydev.json"],
    ["{tmp}/ck", "--device-model", "{tmp}/mydev.json", "--out", "{tmp}/hard.json"],  # a hard link of it
    ["{tmp}/ck", "--device-model", "{tmp}/mydev.json", "--csv", "{tmp}/sub/../mydev.json"],
    ["{tmp}/ck", "--dataset", "npz:{tmp}/d.npz", "--out", "{tmp}/d.npz"],
    ["{tmp}/ck", "{tmp}/ck2", "--device-models", "gaussian,{tmp}/mydev.json", "--out", "{tmp}/mydev.json"],
    ["{tmp}/ck", "{tmp}/ck2", "--device-models", "gaussian,{tmp}/mydev.json", "--csv", "{tmp}/mydev.json"],
])
def test_no_output_replaces_an_input_file(work, capsys, argv):
    (work / "sub").mkdir()
    _refused(work, capsys, ["--runs", "2", *argv], "is the", "that is read")


def test_no_matrix_output_inside_any_of_its_checkpoints(work, capsys):
    os.link(work / "ck2" / "config.json", work / "hard2.json")
    for out in ("{tmp}/ck2/r.json", "{tmp}/hard2.json"):
        _refused(work, capsys, ["{tmp}/ck", "{tmp}/ck2", "--runs", "2", "--out", out], "checkpoint")


def test_no_output_replaces_a_plugin_file(work):
    plugin = work / "plug.py"
    plugin.write_text('"""A plugin that registers nothing."""\n')
    env = {k: v for k, v in os.environ.items() if k != "NVCIM_PLUGINS"}
    env["PYTHONPATH"] = str(Path(nvcim.__file__).resolve().parents[1])  # the nvcim under test
    for flag in ("--out", "--csv"):
        r = subprocess.run([sys.executable, "-m", "nvcim", "eval", str(work / "ck"), "--plugin", str(plugin),
                            "--runs", "2", flag, str(plugin)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "plugin file" in r.stderr and plugin.read_text().startswith('"""A plugin')


# ---- 2. the matrix's outputs are distinct, and its PNG replaces only nvcim's ----------------------
MATRIX = ["{tmp}/ck", "--device-models", "gaussian,rram4", "--sigma", "0.1", "--runs", "2"]


@pytest.mark.parametrize("outputs,words", [
    (["--out", "{tmp}/r.png"], ["give --out a .json name"]),
    (["--out", "{tmp}/same.json", "--csv", "{tmp}/same.json"], ["same file"]),
    (["--out", "{tmp}/c.json", "--csv", "{tmp}/c.png"], ["same file", "heat-map PNG"]),
    (["--out", "{tmp}/res.json"], ["res.png", "nvcim did not write"]),  # the user's own res.png
])
def test_matrix_outputs_are_distinct_and_spare_the_users_png(work, capsys, outputs, words):
    (work / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nthe user's csv target")
    (work / "res.png").write_bytes(b"\x89PNG\r\n\x1a\na user's picture")
    _refused(work, capsys, [*MATRIX, *outputs], *words)


def test_matrix_png_is_checked_before_any_work(work, capsys, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("loaded a checkpoint before checking the outputs")

    monkeypatch.setattr(nvcim.cli.eval_matrix, "load_for_eval", no_work)
    _refused(work, capsys, [*MATRIX, "--out", "{tmp}/q.json"], "q.png", "is a directory")


def test_matrix_replaces_its_own_png(work, capsys):
    from nvcim.report.matrix import is_matrix_png

    out = work / "m.json"
    argv = [a.replace("{tmp}", str(work)) for a in MATRIX]
    assert main(["eval", *argv, "--out", str(out), "--csv", str(work / "m.csv")]) == 0
    assert is_matrix_png(work / "m.png") and not is_matrix_png(work / "mydev.json")
    assert main(["eval", *argv, "--out", str(out)]) == 0  # a rerun into the same files
    # a heat map from before the mark (matplotlib's own Software entry) beside its matrix JSON: nvcim's too
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig = plt.figure()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    (work / "m.png").write_bytes(buf.getvalue())
    assert is_matrix_png(work / "m.png", beside=out) and not is_matrix_png(work / "m.png")
    assert main(["eval", *argv, "--out", str(out)]) == 0 and is_matrix_png(work / "m.png")


# ---- 4. the single-evaluation CSV says what was measured -----------------------------------------
def _csv(path):
    text = Path(path).read_text()
    assert text.splitlines()[0].split(",") == list(CSV_COLUMNS)
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_keeps_its_columns_and_appends_the_new_ones():
    old = ("sigma", "runs", "seed", "n_samples", "clean_accuracy", "quantized_accuracy", "mean", "std", "ci95_lo",
           "ci95_hi", "p1", "p5", "p10", "min", "max", "ekl", "ekl_n", "wall_time_s", "path")
    assert CSV_COLUMNS[:len(old)] == old
    assert set(CSV_COLUMNS[len(old):]) >= {"device_model", "variation", "images_per_chip", "ci_half_width",
                                           "percentiles_from", "full_set_chips", "target_ci", "nonfinite_runs"}


def test_csvs_record_chips_with_non_finite_logits(tmp_path):
    """A chip whose logits are NaN counts as wrong: the CSVs say how many (they read as a plain 0 % before)."""
    import torch

    from nvcim.evaluate import MCResult, monte_carlo_evaluate, write_csv
    from nvcim.evaluate.files import DeviceMatrixFile
    from nvcim.report.matrix import matrix_csv

    model = torch.nn.Linear(4, 3)
    model.weight.data[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = monte_carlo_evaluate(model, (torch.randn(8, 4), torch.randint(0, 3, (8,))),
                                   __import__("nvcim").DeviceConfig(sigma=0.1), runs=2, seed=0)
    assert res.nonfinite_runs == 2
    (row,) = _csv(write_csv(tmp_path / "r.csv", [res]))
    assert row["nonfinite_runs"] == "2"
    rec = DeviceMatrixFile(checkpoints=["ck"], datasets=["d"], device_models=["gaussian"],
                           cells=[[{"device_config": {}, "result": res.to_dict()}]], sigma=0.1, runs=2, seed=0)
    (mrow,) = csv.DictReader(io.StringIO(matrix_csv(rec).decode()))
    assert mrow["nonfinite_runs"] == "2"


def test_csv_names_the_device_model_and_the_target_precision(work, capsys):
    ck = str(work / "ck")
    assert main(["eval", ck, "--runs", "2", "--device-model", "stuck-chen2015", "--csv", str(work / "sc.csv")]) == 0
    (row,) = _csv(work / "sc.csv")
    assert row["device_model"] == "stuck-chen2015" and row["variation"] == "gaussian"
    assert row["target_ci"] == row["images_per_chip"] == row["percentiles_from"] == ""  # every chip, every image
    assert main(["eval", ck, "--runs", "2", "--csv", str(work / "plain.csv")]) == 0
    (row,) = _csv(work / "plain.csv")
    assert row["device_model"] == "" and row["variation"] == "gaussian"  # the checkpoint's own device
    assert main(["eval", ck, "--target-ci", "40", "--pilot-chips", "2", "--images-per-chip", "8", "--max-chips",
                 "6", "--csv", str(work / "tc.csv")]) == 0
    (row,) = _csv(work / "tc.csv")
    assert row["n_samples"] == "32" and row["images_per_chip"] == "8" and row["full_set_chips"] == "2"
    assert row["percentiles_from"] == "full_set_chips" and float(row["target_ci"]) == 40.0
    assert float(row["ci_half_width"]) >= 0


@pytest.mark.parametrize("flag,name,content", [
    ("--out", "victim.py", "print('mine')\n"),                    # a mistyped --out: the user's source file
    ("--out", "notes.json", '{"mine": 1}\n'),                     # JSON, but not an nvcim record
    ("--csv", "data.csv", "x,y\n1,2\n"),                         # the user's own table
])
def test_an_existing_file_nvcim_did_not_write_is_never_replaced(work, capsys, flag, name, content):
    (work / name).write_text(content)
    _refused(work, capsys, ["{tmp}/ck", "--runs", "2", flag, f"{{tmp}}/{name}"], "exists and is not",
             "nvcim replaces only its own files")
    assert (work / name).read_text() == content


def test_a_sweep_cells_result_is_never_replaced_by_eval(work, capsys):
    """A sweep cell's result.json is an nvcim record too, but `nvcim sweep` owns it (report and resume read it)."""
    ck, out = str(work / "ck"), work / "result.json"
    assert main(["eval", ck, "--runs", "2", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    out.write_text(json.dumps({**rec, "cell": {"id": "tiny-w1/mnist5k/vanilla/seed0"}}))
    before = out.read_bytes()
    capsys.readouterr()
    _refused(work, capsys, ["{tmp}/ck", "--runs", "2", "--out", "{tmp}/result.json"], "sweep cell's result",
             "choose another path")
    assert out.read_bytes() == before


def test_its_own_outputs_are_replaced(work, capsys):
    """A rerun replaces the JSON and CSV nvcim wrote (e.g. a script rerunning one command)."""
    ck, out, table = str(work / "ck"), work / "r.json", work / "r.csv"
    for runs in ("2", "3"):
        assert main(["eval", ck, "--runs", runs, "--out", str(out), "--csv", str(table)]) == 0
    assert '"runs": 3' in out.read_text() and _csv(table)[0]["runs"] == "3"


def test_a_loop_of_symbolic_links_is_one_line(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    rc, err = _run(["eval", str(_ckpt(tmp_path / "ck")), "--runs", "2", "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and len(err) == 1, err


# ---- train and sweep: their --out directory replaces no input -----------------------------------
def test_train_refuses_a_data_root_inside_its_out(tmp_path, capsys, monkeypatch):
    import nvcim.data

    calls = []

    def offline(url, dest):
        calls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(nvcim.data.download, "_fetch", offline)
    for root in ("ck", "ck/data"):  # the final checkpoint write would delete the downloaded data
        rc, err = _run(["train", "--model", "tiny", "--dataset", "fashion_mnist", "--data-root", str(tmp_path / root),
                        "--epochs", "1", "--quiet", "--out", str(tmp_path / "ck")], capsys)
        assert rc == 2 and len(err) == 1 and "--data-root" in err[0] and "inside --out" in err[0], err
    monkeypatch.setenv("NVCIM_DATA", str(tmp_path / "ck" / "data"))  # the default data directory, inside --out
    rc, err = _run(["train", "--model", "tiny", "--dataset", "fashion_mnist", "--epochs", "1", "--quiet", "--out",
                    str(tmp_path / "ck")], capsys)
    assert rc == 2 and len(err) == 1 and "NVCIM_DATA" in err[0] and "inside --out" in err[0], err
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_sweep_refuses_a_json_spec_its_record_would_replace(tmp_path, capsys):
    import json

    (tmp_path / "chip.toml").write_text('preset = "rram4"\n')
    raw = {"name": "t", "models": ["tiny"], "datasets": ["mnist5k"], "methods": ["vanilla"], "sigmas": [0.2],
           "seeds": [0], "device_models": ["chip.toml"],
           "train": {"epochs": 1, "limit": 64, "val_runs": 0, "select": "clean"}}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(raw))
    before = _snapshot(tmp_path)
    rc, err = _run(["sweep", str(spec), "--out", str(tmp_path), "--force"], capsys)  # --force: another spec's DIR
    assert rc == 2 and len(err) == 1 and "records the validated spec" in err[0], err
    assert _snapshot(tmp_path) == before  # the user's spec (device model by file name) kept



def test_sweep_resumes_from_its_own_recorded_spec(tmp_path, capsys):
    """DIR/spec.json that nvcim recorded is the spec itself: resuming from it is not refused (it is rewritten with
    the same content)."""
    from nvcim.sweep import load_spec
    from nvcim.sweep.runner import prepare_out_dir

    spec = tmp_path / "s.toml"
    spec.write_text('name = "t"\nmodels = ["tiny"]\ndatasets = ["mnist5k"]\nmethods = ["vanilla"]\nsigmas = [0.2]\n'
                    'seeds = [0]\nbetas = [0.001]\n[train]\nepochs = 1\nlimit = 64\nval_runs = 0\nselect = "clean"\n'
                    '[eval]\nruns = 2\n')
    out = tmp_path / "out"
    prepare_out_dir(load_spec(spec), out)
    recorded = (out / "spec.json").read_text()
    rc, err = _run(["sweep", str(out / "spec.json"), "--out", str(out), "--quiet"], capsys)
    assert rc == 0, err
    assert (out / "spec.json").read_text() == recorded


def test_a_sweep_resumes_from_nvcims_copy_of_a_spec_without_a_name(tmp_path, capsys):
    """A spec without `name` takes its file's stem ("mine"); resumed from nvcim's copy DIR/spec.toml it took "spec"
    and was refused as another spec. The copy now resumes under the name spec.json records."""
    from nvcim.sweep import load_spec
    from nvcim.sweep.runner import prepare_out_dir

    text = ('models = ["tiny"]\ndatasets = ["mnist5k"]\nmethods = ["vanilla"]\nsigmas = [0.2]\nseeds = [0]\n'
            'betas = [0.001]\n[train]\nepochs = 1\nlimit = 64\nval_runs = 0\nselect = "clean"\n[eval]\nruns = 2\n')
    (tmp_path / "mine.toml").write_text(text)
    out = tmp_path / "out"
    prepare_out_dir(load_spec(tmp_path / "mine.toml"), out, spec_text=text, spec_suffix=".toml")
    assert load_spec(out / "spec.toml").name == "mine"
    rc, err = _run(["sweep", str(out / "spec.toml"), "--out", str(out), "--dry-run"], capsys)
    assert rc == 0, err
    (tmp_path / "spec.toml").write_text(text)  # a user's own file named spec.toml: its stem, as before
    assert load_spec(tmp_path / "spec.toml").name == "spec"


def test_a_reader_that_goes_away_loses_no_output_file(tmp_path):
    """`nvcim eval ... --csv X | head -1`: the closed pipe failed the command (exit 2, "Broken pipe") before the CSV
    was written, leaving X.partial/ behind (new user's finding). What is printed after is dropped instead."""
    import subprocess
    import sys

    from nvcim.cli import main

    assert main(["train", "--preset", "smoke", "--quiet", "--num-threads", "1", "--val-runs", "2", "--out",
                 str(tmp_path / "ck")]) == 0
    p = subprocess.Popen([sys.executable, "-m", "nvcim", "eval", str(tmp_path / "ck"), "--sigmas", "0.1,0.2,0.3",
                          "--runs", "3", "--out", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    p.stdout.readline()
    p.stdout.close()  # as `| head -1` does
    err = p.stderr.read().decode()
    assert p.wait() == 0, err
    assert "Broken pipe" not in err and "Exception ignored" not in err, err
    assert (tmp_path / "e.csv").is_file() and (tmp_path / "e.json").is_file()
    assert not (tmp_path / "e.json.partial").exists()


def test_small_messages_name_the_fix(tmp_path, capsys):
    """A new user's papercuts: a training-config typo had no "did you mean", 1-D signals in an npz file no hint of
    the reshape, and `nvcim import` of a file that is no torch.save archive said "aihwkit is not installed"."""
    import numpy as np

    from nvcim.cli import main
    from nvcim.train import TrainConfig

    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sig.npz", x_train=rng.random((20, 256)), y_train=np.arange(20) % 2,
             x_test=rng.random((4, 256)), y_test=np.arange(4) % 2)
    from nvcim.data import load_dataset

    with pytest.raises(ValueError, match=r"save x_train.reshape\(-1, 16, 16\)"):
        load_dataset(f"npz:{tmp_path / 'sig.npz'}")
    assert main(["import", str(tmp_path / "sig.npz"), "--out", str(tmp_path / "imp")]) == 2
    err = capsys.readouterr().err
    assert "neither a conductance map directory" in err and "aihwkit is not installed" not in err
    assert not (tmp_path / "imp").exists()
    from nvcim.cli.export import _torch_saved  # both torch.save formats are taken for model files (review finding)

    import torch

    for new_format in (True, False):
        torch.save(torch.nn.Linear(2, 2), tmp_path / "m.pt", _use_new_zipfile_serialization=new_format)
        assert _torch_saved(tmp_path / "m.pt")
    assert not _torch_saved(tmp_path / "sig.npz")
