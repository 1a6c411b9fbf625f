"""Resuming an interrupted training (nvcim.io.train_state, train(state_dir=...)): every method ends with exactly the
weights of an uninterrupted run; states of another configuration, damaged or foreign ones are refused; the CLI and
sweeps take an interrupted training up where it stopped."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import nvcim.methods as methods
import nvcim.train.loop as loop
from helpers import run_cli, run_cli_err, snapshot
from nvcim.core.config import DeviceConfig
from nvcim.io.train_state import RECORD_FILE, TENSORS_FILE, TrainStateError, read_train_state
from nvcim.train import TrainConfig, resume_problem, train

TINY = dict(model="tiny", dataset="mnist5k", limit=64, epochs=3, batch_size=16, val_runs=2, progress=False,
            num_threads=1, sigma=0.2, seed=5)
METHOD_PARAMS = {"vanilla": {}, "noise_injection": {"logit_scale": 2.0}, "ovf": {"beta": 0.01, "n_variational": 2},
                 "tempered_noise_injection": {"logit_scale": 0.125}, "irs": {"beta": 0.1, "block_sigma": 0.25},
                 "correctnet": {"ortho_lambda": 1e-3}}


class Interrupted(BaseException):  # like a kill: no handler records it as a failed run
    pass


def stop_after(monkeypatch, epoch: int):
    """Make the next training stop right after it saved its state of `epoch` (as a kill would)."""
    real = loop.save_train_state

    def save_then_stop(path, tensors, record):
        real(path, tensors, record)
        if record["epoch"] == epoch:
            raise Interrupted

    monkeypatch.setattr(loop, "save_train_state", save_then_stop)
    return lambda: monkeypatch.setattr(loop, "save_train_state", real)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def interrupted_then_resumed(cfg, state, monkeypatch, epoch=1, **kw):
    undo = stop_after(monkeypatch, epoch)
    with pytest.raises(Interrupted):
        train(cfg, state_dir=state, **kw)
    undo()
    assert (state / RECORD_FILE).is_file() and (state / TENSORS_FILE).is_file()
    return train(cfg, state_dir=state, **kw)


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_resumes_to_the_weights_of_an_uninterrupted_run(method, tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, method=method, method_params=METHOD_PARAMS[method])
    ref = train(cfg)
    res = interrupted_then_resumed(cfg, tmp_path / "state", monkeypatch, out_dir=tmp_path / "ckpt")
    assert same_weights(ref.model, res.model)
    strip = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in ref.metrics["history"]]
    assert [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in res.metrics["history"]] == strip
    for key in ("best_epoch", "best_val_noisy", "best_val_clean", "test_clean", "test_noisy_mean"):
        assert res.metrics[key] == ref.metrics[key], key
    assert res.metrics["resumed_after_epochs"] == [1] and "resumed_after_epochs" not in ref.metrics
    assert not (tmp_path / "state").exists()  # removed once the checkpoint is written
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["metrics"]["resumed_after_epochs"] == [1]


@pytest.mark.parametrize("device", [
    DeviceConfig(sigma=0.2, stuck_at=(0.02, 0.01), read_sigma=0.05),
    DeviceConfig.preset("rram4", sigma=0.2),
], ids=["stuck-at+read-noise", "rram4"])
def test_resume_is_exact_under_other_device_models_and_two_interruptions(device, tmp_path, monkeypatch):
    cfg = TrainConfig(**{**TINY, "epochs": 4}, method="noise_injection", device_config=device)
    ref = train(cfg)
    state = tmp_path / "state"
    for epoch in (1, 2):  # killed twice: resumed after epoch 1, then after epoch 2
        undo = stop_after(monkeypatch, epoch)
        with pytest.raises(Interrupted):
            train(cfg, state_dir=state)
        undo()
    res = train(cfg, state_dir=state)
    assert same_weights(ref.model, res.model)
    assert res.metrics["resumed_after_epochs"] == [1, 2]
    assert res.metrics["images_per_s"] > 0 and res.metrics["train_time_s"] > 0


def test_the_state_holds_what_the_record_says(tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, method="vanilla")
    undo = stop_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(cfg, state_dir=tmp_path / "s")
    undo()
    st = read_train_state(tmp_path / "s")
    assert st.record["format"] == "nvcim-train-state" and st.record["epoch"] == 2 and st.record["epochs"] == 3
    assert [h["epoch"] for h in st.record["loop"]["history"]] == [1, 2]
    assert st.record["train"]["method"] == "vanilla" and st.record["data"]["n_train"] > 0
    assert set(st.tensors["model"]) and st.tensors["task"] == {} and st.tensors["best"] is not None


def test_another_configuration_or_data_is_refused_in_one_line(tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, method="vanilla")
    undo = stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(cfg, state_dir=tmp_path / "s")
    undo()
    before = snapshot(tmp_path)
    for other in (cfg.replace(epochs=4), cfg.replace(seed=6), cfg.replace(limit=80)):
        with pytest.raises(TrainStateError) as e:
            train(other, state_dir=tmp_path / "s")
        assert "\n" not in str(e.value) and "delete the directory" in str(e.value)
    assert snapshot(tmp_path) == before  # nothing touched
    assert train(cfg.replace(progress=True, num_threads=2), state_dir=tmp_path / "s").status == "ok"  # no difference


def test_damaged_and_foreign_states_are_refused_never_run(tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, method="vanilla")
    undo = stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(cfg, state_dir=tmp_path / "s")
    undo()
    state = tmp_path / "s"
    splits = loop.load_dataset("mnist5k", None, val_fraction=0.1, seed=0, limit=64)
    assert resume_problem(cfg, state, splits) is None

    class Evil:  # a pickle that would run code when unpickled: weights_only refuses it
        def __reduce__(self):
            return (print, ("ran",))

    (state / TENSORS_FILE).write_bytes(pickle.dumps(Evil(), protocol=2))
    assert "cannot be loaded" in resume_problem(cfg, state, splits)
    with pytest.raises(TrainStateError, match="cannot be loaded"):
        train(cfg, state_dir=state, splits=splits)
    (state / RECORD_FILE).write_text("{not json")
    assert "not nvcim's training state" in resume_problem(cfg, state, splits)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(TrainStateError, match="not nvcim's training state"):
        train(cfg, state_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "keep"


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


def test_a_sweep_cell_resumes_its_training(tmp_path, monkeypatch, capsys):
    from nvcim.sweep import SweepWarning, expand, load_spec, run_sweep

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('name = "resume"\nmodels = ["tiny"]\nwidth = 0.25\ndatasets = ["mnist5k"]\n'
                         'methods = ["noise_injection"]\nsigmas = [0.2]\nseeds = [0]\n'
                         '[train]\nepochs = 3\nbatch_size = 16\nlimit = 64\nval_runs = 2\n'
                         '[eval]\nruns = 2\nval_runs = 2\n[resources]\nthreads_per_cell = 1\n')
    spec = load_spec(spec_file)
    undo = stop_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        run_sweep(spec, tmp_path / "a", workers=1, progress=False)
    undo()
    (cell,) = expand(spec)
    state = tmp_path / "a" / "cells" / cell.id / "train_state"
    assert read_train_state(state).record["epoch"] == 2
    run_sweep(spec, tmp_path / "a", workers=1, progress=False)
    run_sweep(spec, tmp_path / "b", workers=1, progress=False)  # uninterrupted
    ra, rb = (json.loads((tmp_path / d / "cells" / cell.id / "result.json").read_text()) for d in ("a", "b"))
    assert ra["results"][0]["per_run_correct"] == rb["results"][0]["per_run_correct"]
    assert ra["checkpoint_config"]["metrics"]["resumed_after_epochs"] == [2]
    assert not state.exists()


def test_a_sweep_trains_a_cell_again_when_its_state_cannot_be_resumed(tmp_path, monkeypatch):
    from nvcim.sweep import SweepWarning, expand, load_spec, run_sweep

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('name = "resume"\nmodels = ["tiny"]\nwidth = 0.25\ndatasets = ["mnist5k"]\n'
                         'methods = ["vanilla"]\nsigmas = [0.2]\nseeds = [0]\n'
                         '[train]\nepochs = 2\nbatch_size = 16\nlimit = 64\nval_runs = 2\n'
                         '[eval]\nruns = 2\nval_runs = 2\n[resources]\nthreads_per_cell = 1\n')
    spec = load_spec(spec_file)
    (cell,) = expand(spec)
    state = tmp_path / "a" / "cells" / cell.id / "train_state"
    undo = stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_sweep(spec, tmp_path / "a", workers=1, progress=False)
    undo()
    (state / TENSORS_FILE).write_bytes(b"truncated")
    with pytest.warns(SweepWarning, match="cannot be resumed"):
        summary = run_sweep(spec, tmp_path / "a", workers=1, progress=False)
    assert summary.exit_code == 0 and len(summary.ok) == 1 and not state.exists()
