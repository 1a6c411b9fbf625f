"""What a new user's own model or a damaged training state gets from `nvcim train` (a new-user trial, findings 4, 5, 7):
one line on stderr naming the problem and the fix, exit code 2, before any training step and with nothing written.

- a model that reads a layer's weight itself (F.linear(x, self.fc1.weight)) trained an epoch, then died in the first
  validation with a CoverageError traceback naming only the Python API; `nvcim eval` of such a model gave a traceback;
- a builder without in_channels / image_size was said not to fit the data set, one returning no nn.Module and a
  forward failing on the data's images gave tracebacks;
- a truncated DIR.train-state/state.pt gave an error cut off mid-word, with no fix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim.models
import nvcim.train.loop as loop
from helpers import Interrupted, run_cli, run_cli_err, snapshot, stop_after
from nvcim.io.train_state import TENSORS_FILE
from nvcim.layers.coverage import CoverageError, check_coverage


def _npz(path):
    g = np.random.default_rng(0)
    y_train, y_test = g.integers(0, 3, 96), g.integers(0, 3, 48)
    x_train = (g.random((96, 8, 8)) * 60 + y_train[:, None, None] * 60).astype(np.uint8)
    x_test = (g.random((48, 8, 8)) * 60 + y_test[:, None, None] * 60).astype(np.uint8)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


class Tied(nn.Module):
    """fc1's weight read around fc1 (its forward never runs): its chip would never be read."""

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc2(torch.relu(F.linear(x.flatten(1), self.fc1.weight, self.fc1.bias)))


def tied(num_classes, in_channels, width=1.0, image_size=8):
    return Tied(num_classes, in_channels, image_size)


def mlp(num_classes, in_channels, width=1.0, image_size=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16), nn.ReLU(),
                         nn.Linear(16, num_classes))


def _train_argv(tmp_path, model, *extra):
    return ["train", "--model", model, "--dataset", f"npz:{_npz(tmp_path / 'd.npz')}", "--method", "noise_injection",
            "--sigma", "0.1", "--epochs", "2", "--batch-size", "32", "--val-runs", "2", "--quiet", "--num-threads", "1",
            *extra]


def _no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "create_task", refuse)


def test_a_weight_read_outside_its_layer_is_refused_before_training_naming_the_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(nvcim.models.MODELS, "tied_preflight_test", tied)
    _no_training(monkeypatch)
    argv = _train_argv(tmp_path, "tied_preflight_test", "--out", str(tmp_path / "run"))
    before = snapshot(tmp_path)
    rc, err = run_cli_err(argv, capsys)
    assert rc == 2 and len(err) == 1, err
    assert "'fc1'" in err[0] and "--digital-layers fc1" in err[0] and "TrainConfig.digital_layers" in err[0], err
    assert snapshot(tmp_path) == before  # no checkpoint, no training state


def test_the_same_model_trains_with_the_layer_digital_and_eval_names_the_flag_in_one_line(tmp_path, capsys,
                                                                                            monkeypatch):
    monkeypatch.setitem(nvcim.models.MODELS, "tied_preflight_test", tied)
    ckpt = tmp_path / "run"
    rc, _, err = run_cli(_train_argv(tmp_path, "tied_preflight_test", "--digital-layers", "fc1", "--out", str(ckpt)),
                         capsys)
    assert rc == 0, err
    rc, err = run_cli_err(["eval", str(ckpt), "--runs", "2", "--digital-layers", "none",
                           "--out", str(tmp_path / "e.json")], capsys)  # fc1 on the chip again: it is never read
    assert rc == 2 and len(err) == 1 and err[0].startswith("nvcim eval: error: "), err
    assert "fc1.weight" in err[0] and "--digital-layers fc1" in err[0], err
    assert not (tmp_path / "e.json").exists()


def test_coverage_error_names_the_layers_for_the_flag():
    import nvcim

    model = nvcim.apply_variation_(tied(3, 1), nvcim.DeviceConfig(sigma=0.1))
    with torch.no_grad(), pytest.raises(CoverageError) as e:
        check_coverage(model.eval(), torch.rand(2, 1, 8, 8))
    assert e.value.tensors == ["fc1.weight"] and e.value.layers == ["fc1"]
    assert "--digital-layers fc1" in str(e.value) and "apply_variation_(..., exclude=[...])" in str(e.value)


def onlyk(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


def notmodule(num_classes, in_channels, image_size=8):
    return "hello"


def wrongshape(num_classes, in_channels, image_size=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(100, num_classes))


@pytest.mark.parametrize("builder, texts", [
    (onlyk, ["builder onlyk(num_classes) takes no in_channels or image_size",
             "signature fn(num_classes, in_channels, width, image_size, **options)"]),
    (notmodule, ["builder notmodule returned a str, not an nn.Module"]),
    (wrongshape, ["fails on a [2, 1, 8, 8] batch of dataset", "RuntimeError: mat1 and mat2 shapes cannot be multiplied",
                  "its builder gets in_channels and image_size"]),
])
def test_a_builder_or_forward_that_cannot_work_is_one_line(tmp_path, capsys, monkeypatch, builder, texts):
    monkeypatch.setitem(nvcim.models.MODELS, "odd_builder_test", builder)
    _no_training(monkeypatch)
    rc, err = run_cli_err(_train_argv(tmp_path, "odd_builder_test", "--out", str(tmp_path / "run")), capsys)
    assert rc == 2 and len(err) == 1 and "model 'odd_builder_test'" in err[0], err
    assert "does not fit dataset" not in err[0] and all(t in err[0] for t in texts), err
    assert not (tmp_path / "run").exists()


def test_create_model_names_the_builder_signature(monkeypatch):
    monkeypatch.setitem(nvcim.models.MODELS, "odd_builder_test", onlyk)
    with pytest.raises(nvcim.models.BuilderError, match="takes no in_channels"):
        nvcim.models.create_model("odd_builder_test", 3, 1, image_size=8)
    assert isinstance(nvcim.models.create_model("odd_builder_test", 3), nn.Module)  # what it takes still builds


def test_a_truncated_training_state_is_named_whole_with_the_fix_and_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(nvcim.models.MODELS, "mlp_preflight_test", mlp)
    monkeypatch.chdir(tmp_path)
    argv = _train_argv(tmp_path, "mlp_preflight_test", "--out", "run")
    undo = stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_cli(argv, capsys)
    undo()
    state = tmp_path / "run.train-state" / TENSORS_FILE
    state.write_bytes(state.read_bytes()[:800])  # truncate -s 800
    before = snapshot(tmp_path)
    rc, err = run_cli_err(argv, capsys)
    assert rc == 2 and len(err) == 1, err
    assert "state.pt cannot be loaded (RuntimeError: PytorchStreamReader failed reading zip archive: failed finding " \
           "central directory)" in err[0], err  # the whole first sentence, not cut mid-word, and no more
    assert err[0].endswith("delete run.train-state to train from the start, or use another --out"), err
    assert snapshot(tmp_path) == before  # never deleted by nvcim


def test_the_check_before_training_sees_a_batch_for_routed_branches(tmp_path, capsys, monkeypatch):
    """nvcim train checked the layers on the first two images alone, so a branch those skip was refused as never
    read although Monte Carlo accepts the model (review finding): the check gets a batch, and looks beyond the
    first two images only where those miss a tensor (nvcim.layers.coverage.check_images)."""
    monkeypatch.setitem(nvcim.models.MODELS, "mlp_preflight_test", mlp)
    seen = []
    monkeypatch.setattr(loop, "check_layers_read", lambda model, x, cfg: seen.append(len(x)))
    _no_training(monkeypatch)
    with pytest.raises(AssertionError, match="training started"):  # the checks passed: training would start
        run_cli_err(_train_argv(tmp_path, "mlp_preflight_test", "--out", str(tmp_path / "run")), capsys)
    assert seen == [32], seen
