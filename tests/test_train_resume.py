"""Resuming an interrupted training (nvcim.io.train_state, train(state_dir=...)): every method ends with exactly the
weights of an uninterrupted run; states of another configuration, damaged or foreign ones are refused; the CLI and
sweeps take an interrupted training up where it stopped."""

from __future__ import annotations

import json
import pickle
import re
import shutil

import pytest
import torch

import nvcim.methods as methods
import nvcim.train.loop as loop
from helpers import Interrupted, run_cli, snapshot, stop_after
from nvcim.core.config import DeviceConfig
from nvcim.io.train_state import RECORD_FILE, TENSORS_FILE, TrainStateError, read_train_state
from nvcim.train import TrainConfig, resume_problem, train

TINY = dict(model="tiny", dataset="mnist5k", limit=64, epochs=3, batch_size=16, val_runs=2, progress=False,
            num_threads=1, sigma=0.2, seed=5)
METHOD_PARAMS = {"vanilla": {}, "noise_injection": {"logit_scale": 2.0}, "ovf": {"beta": 0.01, "n_variational": 2},
                 "tempered_noise_injection": {"logit_scale": 0.125}, "irs": {"beta": 0.1, "block_sigma": 0.25},
                 "correctnet": {"ortho_lambda": 1e-3}}


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
    # the field that differs, not two whole records (a 529-character line led with both device_config dicts)
    with pytest.raises(TrainStateError, match=r"another configuration \(sigma: 0.2 there, 0.25 now") as e:
        train(cfg.replace(sigma=0.25), state_dir=tmp_path / "s")
    assert len(str(e.value)) < 400
    assert snapshot(tmp_path) == before  # nothing touched
    with pytest.warns(UserWarning, match="torch threads"):  # allowed, with a word on the last bits
        assert train(cfg.replace(progress=True, num_threads=2), state_dir=tmp_path / "s").status == "ok"


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

    import zipfile  # a flipped bit in a tensor's bytes: torch.load checks no CRC and resumed it (a sweep review)

    with zipfile.ZipFile(state / TENSORS_FILE) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray((state / TENSORS_FILE).read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(
        data[info.header_offset + 28:info.header_offset + 30], "little")  # (the local header's extra field length)
    good = bytes(data)
    data[start + info.compress_size // 2] ^= 0x01
    (state / TENSORS_FILE).write_bytes(bytes(data))
    assert "fails its checksum" in resume_problem(cfg, state, splits)
    (state / TENSORS_FILE).write_bytes(good)
    assert resume_problem(cfg, state, splits) is None
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
    rc, out, _ = run_cli(["sweep", str(spec_file), "--out", str(tmp_path / "a"), "--dry-run"], capsys)
    assert rc == 0 and f"pending  {cell.id}" in out and "(training resumes after epoch 2 of 3)" in out
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


def interrupted_state(tmp_path, monkeypatch, cfg=None, epoch=1, name="s"):
    cfg = cfg or TrainConfig(**TINY, method="vanilla")
    undo = stop_after(monkeypatch, epoch)
    with pytest.raises(Interrupted):
        train(cfg, state_dir=tmp_path / name)
    undo()
    return cfg, tmp_path / name


def edit_record(state, **changes):
    rec = json.loads((state / RECORD_FILE).read_text())
    for path, value in changes.items():
        part, key = path.split("__")
        if value is None:
            rec[part].pop(key)
        else:
            rec[part][key] = value
    (state / RECORD_FILE).write_text(json.dumps(rec))


@pytest.mark.parametrize("change, expected", [
    ({"loop__images": None}, "loop.images is missing"),
    ({"loop__history": "x"}, "loop.history is missing or of the wrong type"),
    ({"run__device_type": "cuda"}, "its epochs ran on cuda"),
    ({"run__amp": True}, "ran on"),
])
def test_a_record_that_is_not_nvcims_or_ran_elsewhere_is_one_line(change, expected, tmp_path, monkeypatch):
    cfg, state = interrupted_state(tmp_path, monkeypatch)
    edit_record(state, **change)
    splits = loop.load_dataset("mnist5k", None, val_fraction=0.1, seed=0, limit=64)
    problem = resume_problem(cfg, state, splits)
    assert problem is not None and expected in problem and "\n" not in problem
    with pytest.raises(TrainStateError, match=expected):
        train(cfg, state_dir=state, splits=splits)


def test_tensors_that_do_not_fit_the_model_are_one_line(tmp_path, monkeypatch):
    cfg, state = interrupted_state(tmp_path, monkeypatch)
    t = torch.load(state / TENSORS_FILE, weights_only=True)
    t["model"].pop(next(iter(t["model"])))
    torch.save(t, state / TENSORS_FILE)
    with pytest.raises(TrainStateError, match="does not fit this model"):
        train(cfg, state_dir=state)
    t["rng"]["torch"] = torch.zeros(3)  # float: not an RNG state
    torch.save(t, state / TENSORS_FILE)
    with pytest.raises(TrainStateError, match="entry 'rng' is not what nvcim writes"):
        train(cfg, state_dir=state)


@pytest.mark.parametrize("damage, expected", [
    ("moment", "has shape"), ("groups", "other parameter groups"), ("param", "does not have"),
    ("schedule", "learning-rate schedule state lacks"), ("group-list", "other parameter groups"),
    ("lr", "not a learning rate"), ("betas", "betas='missing'"), ("entry", "is not a mapping"),
    ("base_lrs", "base_lrs='x'"), ("last_epoch", "last_epoch=-3")])
def test_optimizer_and_schedule_states_that_do_not_fit_are_one_line(damage, expected, tmp_path, monkeypatch):
    """torch's own load_state_dict takes an Adam moment of another shape (the first step then fails) and an empty
    scheduler dict (the cosine schedule silently restarts): both are refused before training."""
    cfg, state = interrupted_state(tmp_path, monkeypatch)
    t = torch.load(state / TENSORS_FILE, weights_only=True)
    opt = t["optimizer"]
    if damage == "moment":
        pid = next(iter(opt["state"]))
        opt["state"][pid]["exp_avg"] = opt["state"][pid]["exp_avg"].flatten()[:1].clone()
    elif damage == "groups":
        opt["param_groups"][0]["params"] = opt["param_groups"][0]["params"][:-1]
    elif damage == "param":
        opt["state"][10_000] = dict(next(iter(opt["state"].values())))
    elif damage == "group-list":
        opt["param_groups"] = [list(opt["param_groups"][0].items())]
    elif damage == "lr":
        opt["param_groups"][0]["lr"] = "x"
    elif damage == "betas":
        del opt["param_groups"][0]["betas"]
    elif damage == "entry":
        opt["state"][next(iter(opt["state"]))] = [1]
    elif damage in ("base_lrs", "last_epoch"):
        t["scheduler"][damage] = "x" if damage == "base_lrs" else -3
    else:
        t["scheduler"] = {}
    torch.save(t, state / TENSORS_FILE)
    with pytest.raises(TrainStateError, match=f"does not fit this model.*{re.escape(expected)}"):
        train(cfg, state_dir=state)


def test_a_schedule_state_of_another_torch_version_resumes(tmp_path, monkeypatch):
    """Private keys one torch version saves and another does not (_is_initial vs verbose) do not block a resume."""
    cfg, state = interrupted_state(tmp_path, monkeypatch)
    t = torch.load(state / TENSORS_FILE, weights_only=True)
    t["scheduler"].pop("_is_initial", None)
    t["scheduler"]["verbose"] = False
    torch.save(t, state / TENSORS_FILE)
    assert train(cfg, state_dir=state).metrics["resumed_after_epochs"] == [1]


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from nvcim.io.train_state import TrainStateSaveError

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123\nmore")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainStateSaveError, match="cannot save the training state .* unexpected pos 123: check"):
        train(TrainConfig(**TINY, method="vanilla"), state_dir=tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half-written directory left
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")  # the state's parent cannot be made: the OS error in one line, not a trace
    from nvcim.io.train_state import save_train_state

    with pytest.raises(TrainStateSaveError, match="cannot save the training state .*file/s.*: check the disk"):
        save_train_state(tmp_path / "file" / "s", {k: None for k in ("model", "task", "optimizer", "scheduler", "rng",
                                                                      "best", "initial")}, {})


def test_a_finished_state_is_removed_in_one_rename_and_a_kill_after_it_is_tidied(tmp_path, monkeypatch):
    """remove_train_state unlinked its two files one by one: a kill between them left state.json alone, a state that
    could neither be resumed nor recognised as the finished run's, so --overwrite was refused until deleted by hand."""
    from nvcim.io.train_state import recover_train_state, remove_train_state

    cfg, state = interrupted_state(tmp_path, monkeypatch, TrainConfig(**{**TINY, "epochs": 3}, method="vanilla"), 1)
    remove_train_state(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    cfg, state = interrupted_state(tmp_path, monkeypatch, TrainConfig(**{**TINY, "epochs": 3}, method="vanilla"), 1)
    state.rename(tmp_path / ".s.done-abc12345")  # as a kill during the deletion after the rename leaves it
    (tmp_path / ".s.done-abc12345" / TENSORS_FILE).unlink()
    (tmp_path / ".s.done-notmine").mkdir()  # not nvcim's name pattern: kept
    recover_train_state(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.done-notmine"]


def test_ctrl_c_after_the_checkpoint_is_written_says_the_training_finished(tmp_path, monkeypatch, capsys):
    """The hint said the state "is kept: the same command resumes", which the same command then refused."""
    import nvcim.train.loop as loop_module
    from nvcim.cli import main

    def killed(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "remove_train_state", killed)
    out = tmp_path / "run"
    argv = ["train", "--model", "tiny", "--limit", "64", "--epochs", "2", "--batch-size", "32", "--val-runs", "2",
            "--num-threads", "1", "--quiet", "--out", str(out)]
    assert main(argv) == 130
    assert "the training had finished: its checkpoint" in capsys.readouterr().err


def test_a_kill_between_the_two_renames_of_a_save_is_recovered(tmp_path, monkeypatch):
    cfg, state = interrupted_state(tmp_path, monkeypatch, TrainConfig(**{**TINY, "epochs": 4}, method="vanilla"), 2)
    ref = train(cfg)
    # as a kill between publish_directory's renames leaves it: the epoch-2 state renamed aside, a newer one not in place
    state.rename(tmp_path / ".s.old-abc123")
    (tmp_path / ".s.tmp-def456").mkdir()
    (tmp_path / ".s.tmp-def456" / TENSORS_FILE).write_bytes(b"half")
    res = train(cfg, state_dir=state)
    assert res.metrics["resumed_after_epochs"] == [2] and same_weights(ref.model, res.model)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_inside_a_directory_swap_puts_the_previous_one_back(tmp_path, monkeypatch):
    import os

    from nvcim.io import files

    old, new = tmp_path / "d", tmp_path / ".d.tmp-1"
    old.mkdir()
    (old / "a").write_text("previous")
    new.mkdir()
    (new / "a").write_text("next")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # after the previous one was renamed aside, before the new one is in place
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        files.publish_directory(new, old)
    monkeypatch.setattr(files.os, "replace", real)
    assert (old / "a").read_text() == "previous"


def test_state_and_checkpoint_must_not_overlap(tmp_path):
    before = snapshot(tmp_path)
    for state in (tmp_path / "ck", tmp_path / "ck" / "state"):
        with pytest.raises(TrainStateError, match="overlap"):
            train(TrainConfig(**TINY, method="vanilla"), out_dir=tmp_path / "ck", state_dir=state)
    assert snapshot(tmp_path) == before


def test_resuming_with_other_threads_warns(tmp_path, monkeypatch):
    cfg, state = interrupted_state(tmp_path, monkeypatch)
    with pytest.warns(UserWarning, match="ran with 1 torch threads, this part with 2"):
        train(cfg.replace(num_threads=2), state_dir=state)


def test_resuming_under_other_code_warns(tmp_path, monkeypatch):
    """A state written before nvcim, a plugin or torch changed resumed without a word (review suspicion): the
    epochs after the resume ran under other code than those before."""
    import warnings

    import nvcim.evaluate.partial as partial

    cfg, state = interrupted_state(tmp_path, monkeypatch)
    monkeypatch.setattr(partial, "code_fingerprint", lambda: "edited code")
    with pytest.warns(UserWarning, match="its epochs ran under other code"):
        train(cfg, state_dir=state)
    cfg, state = interrupted_state(tmp_path / "again", monkeypatch)  # written under "edited code": resumed alike
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(cfg, state_dir=state)


def sweep_spec(tmp_path, method="vanilla", epochs=3):
    from nvcim.sweep import load_spec

    f = tmp_path / "spec.toml"
    f.write_text(f'name = "resume"\nmodels = ["tiny"]\nwidth = 0.25\ndatasets = ["mnist5k"]\nmethods = ["{method}"]\n'
                 f'sigmas = [0.2]\nseeds = [0]\n[train]\nepochs = {epochs}\nbatch_size = 16\nlimit = 64\nval_runs = 2\n'
                 '[eval]\nruns = 2\nval_runs = 2\n[resources]\nthreads_per_cell = 1\n')
    return load_spec(f)


def test_a_sweep_keeps_a_state_holding_a_users_file_and_says_so(tmp_path, monkeypatch):
    from nvcim.sweep import expand, run_sweep

    spec = sweep_spec(tmp_path)
    undo = stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_sweep(spec, tmp_path / "a", workers=1, progress=False)
    undo()
    state = tmp_path / "a" / "cells" / expand(spec)[0].id / "train_state"
    (state / "notes.txt").write_text("mine")
    summary = run_sweep(spec, tmp_path / "a", workers=1, progress=False)
    assert summary.exit_code == 1 and "notes.txt" in (state.parent / "failed.json").read_text()
    assert sorted(p.name for p in state.iterdir()) == ["notes.txt", RECORD_FILE, TENSORS_FILE]
    (state / "notes.txt").unlink()
    summary = run_sweep(spec, tmp_path / "a", workers=1, progress=False, retry_failed=True)
    assert summary.exit_code == 0 and not state.exists()
    result = json.loads((state.parent / "result.json").read_text())
    assert result["checkpoint_config"]["metrics"]["resumed_after_epochs"] == [1]


def test_a_sweep_retrains_a_state_whose_tensors_do_not_fit_and_drops_a_stale_one(tmp_path, monkeypatch):
    from nvcim.sweep import SweepWarning, expand, run_sweep

    spec = sweep_spec(tmp_path)
    undo = stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_sweep(spec, tmp_path / "a", workers=1, progress=False)
    undo()
    state = tmp_path / "a" / "cells" / expand(spec)[0].id / "train_state"
    t = torch.load(state / TENSORS_FILE, weights_only=True)
    t["model"].pop(next(iter(t["model"])))
    torch.save(t, state / TENSORS_FILE)
    kept = state.with_name("kept")
    import shutil

    shutil.copytree(state, kept)
    with pytest.warns(SweepWarning, match="does not fit this model"):
        assert run_sweep(spec, tmp_path / "a", workers=1, progress=False).exit_code == 0
    assert not state.exists()
    # a state beside a finished checkpoint (a kill between the two writes) is removed when the checkpoint is reused
    (state.parent / "result.json").unlink()
    kept.rename(state)
    assert run_sweep(spec, tmp_path / "a", workers=1, progress=False).exit_code == 0
    assert not state.exists()


def test_dry_run_progress_names_scored_candidates_and_saved_epochs(tmp_path):
    from nvcim.sweep import expand, validate_spec
    from nvcim.sweep.cells import fmt_beta
    from nvcim.sweep.files import cell_dir, partial_progress

    (cell,) = expand(validate_spec({"name": "p", "models": ["tiny"], "datasets": ["mnist5k"], "methods": ["ovf"],
                                    "sigmas": [0.2], "seeds": [0], "betas": [1e-2, 1e-3, 1e-4]}))
    d = cell_dir(tmp_path, cell.id)
    assert partial_progress(tmp_path, cell) is None
    (d / "beta" / fmt_beta(1e-2)).mkdir(parents=True)
    (d / "beta" / fmt_beta(1e-2) / "score.json").write_text("{}")  # not a score (the run scores it again)
    assert partial_progress(tmp_path, cell) is None
    (d / "beta" / fmt_beta(1e-2) / "score.json").write_text(json.dumps({"beta": 1e-2, "val_mean": 50.0, "status": "ok"}))
    (d / "beta" / fmt_beta(1e-3) / "train_state").mkdir(parents=True)
    (d / "beta" / fmt_beta(1e-3) / "train_state" / RECORD_FILE).write_text(json.dumps({"epoch": 3, "epochs": 12}))
    torch.save({"x": torch.zeros(2)}, d / "beta" / fmt_beta(1e-3) / "train_state" / "state.pt")
    assert partial_progress(tmp_path, cell) == (f"β 1 of 3 scored; β {fmt_beta(1e-3)} training resumes after epoch 3 "
                                                "of 12")
    tensors = d / "beta" / fmt_beta(1e-3) / "train_state" / "state.pt"
    tensors.write_bytes(tensors.read_bytes()[:300])  # truncated: the run would train it from the start
    assert partial_progress(tmp_path, cell) == (f"β 1 of 3 scored; β {fmt_beta(1e-3)} training state damaged: trained "
                                                "from the start")


def test_a_log_file_gets_progress_lines_within_an_epoch(tmp_path, monkeypatch, capsys):
    """Without a terminal the bar is off, so an epoch of a full-width model (an hour and more on CPU) printed
    nothing until it ended (review finding): a line with the step and the epoch's remaining time now and then."""
    import nvcim.train.loop as loop

    monkeypatch.setattr(loop, "LINE_EVERY_S", 0.0)
    train(TrainConfig(**TINY, method="vanilla").replace(progress=True))
    err = capsys.readouterr().err
    assert "epoch 1/3: step 4/4, loss" in err and "training ends in about" in err


def test_progress_lines_go_where_log_says_and_no_bar_is_drawn(monkeypatch, capsys):
    """train(log=...) (a sweep cell's lines, headed by its id): every epoch's line and the lines within an epoch go
    there, whatever cfg.progress says, and nothing to stderr."""
    import nvcim.train.loop as loop

    monkeypatch.setattr(loop, "LINE_EVERY_S", 0.0)
    for progress in (False, True):
        lines: list[str] = []
        train(TrainConfig(**TINY, method="vanilla").replace(progress=progress), log=lines.append)
        assert any(line.startswith("epoch 2/3: step 4/4, loss ") for line in lines), lines
        assert any(line.startswith("epoch 3/3: loss ") for line in lines), lines
        assert capsys.readouterr().err == ""


def test_an_empty_validation_split_under_select_noisy_is_said(tmp_path):
    """val_fraction 0.1 of 4 training images rounds to none: select="noisy" silently kept the last epoch."""
    with pytest.warns(UserWarning, match="the validation split is empty .* the last epoch is kept"):
        train(TrainConfig(**{**TINY, "limit": None, "epochs": 1}, method="vanilla").replace(val_fraction=0.1),
              splits=_tiny_splits(4))


def _tiny_splits(n):
    """mnist5k's splits with n training images and no validation images."""
    from nvcim.data import load_dataset
    from nvcim.data.splits import DatasetSplits

    full = load_dataset("mnist5k", val_fraction=0.0, limit=64)
    return DatasetSplits(info=full.info, train=full.train.subset(slice(0, n)), val=full.val, test=full.test)


def test_a_resume_judges_the_data_by_content_and_the_device_by_where_it_ran(tmp_path, monkeypatch):
    """--device auto then cpu (one machine) or another spelling of the data root were refused as "another
    configuration" (review suspicion); other images of the same counts under the same name (a replaced data file)
    were not. The data record holds the splits' digest; a state written before it is judged by the counts."""
    cfg, state = interrupted_state(tmp_path, monkeypatch)
    splits = loop.load_dataset("mnist5k", None, val_fraction=0.1, seed=0, limit=64)
    assert resume_problem(cfg.replace(device="cpu"), state, splits) is None  # (it ran with "auto" on this CPU)
    assert resume_problem(cfg.replace(data_root=str(tmp_path)), state, splits) is None
    other = loop.load_dataset("mnist5k", None, val_fraction=0.1, seed=1, limit=64)  # same counts, other images
    assert "trained on other data" in resume_problem(cfg, state, other)
    edit_record(state, data__sha256=None)  # a state written before the digest: the counts decide
    assert resume_problem(cfg, state, other) is None


def test_partial_work_of_another_definition_is_said_and_a_plugin_change_vouched_for_keeps_it(tmp_path):
    """A new user's trial: after a plugin edit, `--dry-run` said "training resumes after epoch 5 of 60" while the run
    removed the training state (another definition: plugin_code) and trained from epoch 0, even with
    --accept-plugin-change, which vouches that the edit does not change the cell."""
    from nvcim.sweep import expand, validate_spec
    from nvcim.sweep.files import adopt_plugin_change, cell_dir, partial_progress, prepare_cell_dir

    (cell,) = expand(validate_spec({"name": "p", "models": ["tiny"], "datasets": ["mnist5k"],
                                    "methods": ["noise_injection"], "sigmas": [0.2], "seeds": [0]}))
    d = cell_dir(tmp_path, cell.id)
    (d / "train_state").mkdir(parents=True)
    (d / "train_state" / RECORD_FILE).write_text(json.dumps({"epoch": 5, "epochs": 60}))
    torch.save({"x": torch.zeros(2)}, d / "train_state" / "state.pt")
    earlier = {**cell.to_dict(), "threads": 1, "plugin_code": "0" * 64}  # built under the plugin before its edit
    (d / "cell.json").write_text(json.dumps(earlier))
    assert partial_progress(tmp_path, cell) == "partial work of another definition (plugin_code differ; " \
                                               "--accept-plugin-change keeps it): trained from the start"
    assert partial_progress(tmp_path, cell, accept_plugin_change=True) == "training resumes after epoch 5 of 60"
    (d / "failed.json").write_text("{}")  # failed under the earlier code (perhaps what the edit fixes): not adopted
    assert adopt_plugin_change(tmp_path, [cell]) == []
    (d / "failed.json").unlink()
    assert adopt_plugin_change(tmp_path, [cell]) == [cell.id]
    prepare_cell_dir(tmp_path, cell, 1)
    assert (d / "train_state" / "state.pt").is_file()  # kept: the run resumes it
    # another definition's work (a learning rate edited) is said to be redone, and is
    (d / "cell.json").write_text(json.dumps({**earlier, "train": {**earlier["train"], "lr": 0.5}}))
    assert partial_progress(tmp_path, cell, accept_plugin_change=True).startswith(
        "partial work of another definition (plugin_code, train differ): trained from the start")
    assert adopt_plugin_change(tmp_path, [cell]) == []
    prepare_cell_dir(tmp_path, cell, 1)
    assert not (d / "train_state").exists()


def test_sigterm_stops_nvcim_train_like_ctrl_c_and_the_same_command_resumes(tmp_path):
    """A scheduler's SIGTERM (preemption, `kill`) killed the process on the spot: no "interrupted" line, and the output
    lock left behind; it now stops like Ctrl-C (exit 143, lock removed, the saved epochs kept)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nvcim", "train", "--model", "tiny", "--limit", "200", "--epochs", "400",
           "--batch-size", "32", "--val-runs", "0", "--select", "last", "--num-threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = out.with_name(out.name + ".train-state")
    deadline = time.time() + 120
    while not (state / RECORD_FILE).is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "nvcim train: terminated; its state after the last finished epoch is kept" in err, err
    assert not state.with_name(state.name + ".lock").exists() and (state / RECORD_FILE).is_file()


def test_dry_run_says_partial_work_of_another_thread_count_is_redone(tmp_path, capsys):
    """A review's catch: --dry-run promised "training resumes after epoch 5 of 60" for partial work made with another
    number of threads per cell, which the local backend redoes from scratch (bitwise-reproducible results)."""
    import yaml

    from nvcim.cli import main
    from nvcim.sweep import expand, validate_spec
    from nvcim.sweep.files import cell_dir

    raw = {"name": "p", "models": ["tiny"], "datasets": ["mnist5k"], "methods": ["noise_injection"], "sigmas": [0.2],
           "seeds": [0], "train": {"epochs": 60}, "resources": {"threads_per_cell": 1}}
    (cell,) = expand(validate_spec(raw))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    d = cell_dir(out, cell.id)
    (d / "train_state").mkdir(parents=True)
    (d / "train_state" / RECORD_FILE).write_text(json.dumps({"epoch": 5, "epochs": 60}))
    torch.save({"x": torch.zeros(2)}, d / "train_state" / "state.pt")
    (d / "cell.json").write_text(json.dumps({**cell.to_dict(), "threads": 7}))
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if cell.id in x)
    assert "made with 7 thread(s) per cell, this run uses 1: trained from the start" in line, line
    (d / "cell.json").write_text(json.dumps({**cell.to_dict(), "threads": 1}))
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run"]) == 0
    assert "training resumes after epoch 5 of 60" in capsys.readouterr().out
    # the Ray backend (threads = cpus_per_cell when not pinned) redoes it too: its dry run said "resumes"
    raw["resources"] = {"cpus_per_cell": 2}
    spec.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run", "--backend", "ray", "--force"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if cell.id in x)
    assert "made with 1 thread(s) per cell, this run uses 2: trained from the start" in line, line
