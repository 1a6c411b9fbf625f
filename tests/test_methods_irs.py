"""IRS (nvcim.methods.irs, SPEC §7): the combined output by hand, head placement per model, noisy heads,
joint training, and heads that never reach the deployed backbone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import run_cli
from nvcim.core.config import DeviceConfig
from nvcim.io.checkpoint import load_checkpoint
from nvcim.layers.noise import noisy_modules, noisy_parameters
from nvcim.methods import METHODS, create_task, irs_combine
from nvcim.models import create_model
from nvcim.train import TrainConfig, train

EXACT = DeviceConfig(sigma=0.0, quantize=False)  # the device leaves float weights as they are


def test_combined_output_by_hand():
    b = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    h = [torch.tensor([[10.0, 0.0, -10.0]], dtype=torch.float64), torch.tensor([[0.0, 100.0, 0.0]], dtype=torch.float64),
         torch.tensor([[1000.0, 0.0, 0.0]], dtype=torch.float64)]
    # (O_b − β·(Out_1 + 0.1·Out_2 + 0.01·Out_3)) / 4 with β = 0.5: Σ = [20, 10, −10]
    expected = torch.tensor([[(1 - 10) / 4, (2 - 5) / 4, (3 + 5) / 4]], dtype=torch.float64)
    assert torch.equal(irs_combine(b, h, 0.5), expected)
    assert torch.equal(irs_combine(b, h[:1], 0.0), b / 2)


def two_stage_model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).double()
    m.stages, m.nvcim_spec = ("1", "3", "5"), {"in_channels": 1, "image_size": 4}
    return m


def test_task_output_and_loss_equal_the_hand_computation():
    model = two_stage_model()
    task = create_task("irs", model, EXACT, beta=0.3)
    assert len(task.heads) == 2  # after stages "1" and "3", not after the deepest
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1])
    loss, out = task(x, y)
    # by hand: the heads read the feature maps after model[1] and model[3]; pool to min(round(√(2048/2)), 4) = 4
    f1 = model[1](model[0](x))
    f2 = model[3](model[2](f1))
    backbone = model[6](model[5](model[4](f2)))
    outs = []
    for head, f in zip(task.heads, (f1, f2)):
        lin1, lin2 = head[2], head[4]
        assert head[0].output_size == (4, 4) and lin1.in_features == 2 * 16 and lin1.out_features == 512
        outs.append(F.linear(torch.relu(F.linear(f.flatten(1), lin1.weight, lin1.bias)), lin2.weight, lin2.bias))
    expected = (backbone - 0.3 * (outs[0] + 0.1 * outs[1])) / 3
    assert torch.allclose(loss, F.cross_entropy(expected, y), atol=1e-12)
    assert torch.allclose(out, backbone, atol=1e-12)  # the logits the train accuracy counts: the deployed model's


def test_heads_train_jointly_and_finish_drops_them():
    model = two_stage_model()
    task = create_task("irs", model, DeviceConfig(sigma=0.3), beta=0.1)
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in ids for p in task.heads.parameters()) and all(id(p) in ids for p in model.parameters())
    head_w = task.heads[0][2].weight.detach().clone()
    conv_w = model[0].weight.detach().clone()
    loss, _ = task(torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    assert not torch.equal(head_w, task.heads[0][2].weight) and not torch.equal(conv_w, model[0].weight)
    plain = task.finish()
    assert plain is model and noisy_modules(model) == [] and len(task.heads) == 0
    assert list(task.parameters()) == list(model.parameters())


@pytest.mark.parametrize("block_sigma,expected", [(None, 0.3), (0.1, 0.1)])
def test_heads_are_noisy_at_the_block_sigma(block_sigma, expected):
    task = create_task("irs", two_stage_model(), DeviceConfig(sigma=0.3), block_sigma=block_sigma)
    heads = noisy_parameters(task.heads)
    assert len(heads) == 4 and {p.control.sigma for p in heads} == {expected}
    assert {p.control.sigma for p in noisy_parameters(task.model)} == {0.3}
    # and the heads' chips really vary that much: the same draws (seed) scale with σ against the training σ's task
    import nvcim

    ref = create_task("irs", two_stage_model(), DeviceConfig(sigma=0.3))  # same model and heads (seeded)
    for name, w in task.heads.state_dict().items():
        if name.endswith("weight") and w.dim() == 2:
            w_d = nvcim.quantize(w, DeviceConfig(sigma=0.3))
            dev = nvcim.draw_chip(task.heads, seed=3)[name] - w_d
            dev_ref = nvcim.draw_chip(ref.heads, seed=3)[name] - w_d
            assert dev.abs().max() > 0
            torch.testing.assert_close(dev, dev_ref * (expected / 0.3), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model,width,channels,stages,features", [
    ("vgg8", 1.0, 1, ["features.2", "features.6", "features.13"], [64 * 36, 128 * 16, 256 * 9]),  # the authors'
    ("resnet18", 1.0, 3, ["layer1", "layer2", "layer3"], [64 * 36, 128 * 16, 256 * 9]),
    ("vgg8", 0.25, 1, ["features.2", "features.6", "features.13"], [16 * 121, 32 * 64, 64 * 36]),  # ~2k each
])
def test_heads_are_placed_by_the_stage_rule(model, width, channels, stages, features):
    m = create_model(model, 10, channels, width=width)
    task = create_task("irs", m, DeviceConfig(sigma=0.3))
    assert [n for n, _ in task.stages] == stages
    assert [h[2].in_features for h in task.heads] == features
    assert all(h[2].out_features == 512 and h[4].out_features == 10 for h in task.heads)


def test_a_model_without_stages_is_refused_in_one_line():
    with pytest.raises(ValueError, match="names no stages") as e:
        create_task("irs", nn.Sequential(nn.Linear(4, 2)), DeviceConfig(sigma=0.3))
    assert "\n" not in str(e.value)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    m.stages = ("1", "2")
    with pytest.raises(ValueError, match="input shape"):  # heads are sized from one probe forward
        create_task("irs", m, DeviceConfig(sigma=0.3))


def test_traits():
    irs = METHODS.get("irs")
    assert irs.search == "beta" and {1e-1, 1e-2, 1e-3} <= set(irs.search_values) and irs.uses_device
    assert irs.is_paper_recipe({"beta": 0.01}) and not irs.is_paper_recipe({"beta": 0.01, "block_sigma": 0.05})


TINY = dict(model="tiny", dataset="mnist5k", limit=64, epochs=1, batch_size=16, val_runs=2, progress=False,
            num_threads=1, sigma=0.2)


def test_checkpoint_holds_only_the_plain_backbone(tmp_path):
    res = train(TrainConfig(**TINY, method="irs", method_params={"beta": 0.1}), tmp_path / "ck")
    assert res.status == "ok"
    model, config = load_checkpoint(tmp_path / "ck")
    plain = create_model("tiny", 10, 1)
    assert type(model) is type(plain) and model.state_dict().keys() == plain.state_dict().keys()
    assert res.model.state_dict().keys() == plain.state_dict().keys()
    assert config["method"] == {"name": "irs", "beta": 0.1, "block_sigma": None}


def test_cli_trains_irs(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["train", "--model", "tiny", "--limit", "48", "--epochs", "1", "--batch-size", "16",
                               "--val-runs", "2", "--sigma", "0.2", "--method", "irs", "--beta", "0.01",
                               "--block-sigma", "0.1", "--quiet", "--num-threads", "1", "--out", str(out)], capsys)
    assert rc == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == {"name": "irs", "beta": 0.01, "block_sigma": 0.1}
    # where the (dropped) heads sat is recorded and printed: tiny's stages are features.3 and features.6
    assert config["metrics"]["method_facts"]["heads_after"] == ["features.3"]
    assert "heads after features.3" in stdout


def test_cli_refuses_irs_on_a_model_without_stages_in_one_line(tmp_path, capsys):
    from nvcim.models import MODELS, register_model

    @register_model("flat_test")
    def flat(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, image_size: int = 32):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    spec = tmp_path / "spec.toml"  # a sweep refuses it with the spec's checks, not when the cell runs
    spec.write_text('name = "s"\nmodels = ["flat_test", "tiny"]\ndatasets = ["mnist5k"]\nmethods = ["irs", "vanilla"]\n'
                    'sigmas = [0.1]\nseeds = [0]\n[train]\nepochs = 1\nlimit = 48\n')
    try:
        out = tmp_path / "run"
        rc, _, err = run_cli(["train", "--model", "flat_test", "--limit", "48", "--epochs", "1", "--method", "irs",
                              "--quiet", "--num-threads", "1", "--out", str(out)], capsys)
        src, _, serr = run_cli(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--dry-run"], capsys)
    finally:
        MODELS.unregister("flat_test")
    assert rc == 2 and "names no stages" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert src == 2 and "method 'irs' cannot train model 'flat_test'" in serr and "names no stages" in serr
    assert not (tmp_path / "sw").exists()


def test_heads_read_conv1d_maps_and_flat_features_as_the_hand_computation():
    # every model with named stages: an MLP's [B, F] and a Conv1d's [B, C, L] stage outputs were refused
    # ("irs reads [B, C, H, W] feature maps ... name convolutional stages")
    class Rows(nn.Module):  # a Conv1d over image rows, then an MLP
        stages = ("conv", "fc1", "fc2")

        def __init__(self):
            super().__init__()
            self.conv, self.fc1, self.fc2 = nn.Conv1d(4, 3, 3, padding=1), nn.Linear(12, 5), nn.Linear(5, 3)

        def forward(self, x):  # x [B, 1, 4, 4]
            h = torch.relu(self.conv(x.flatten(1, 2)))  # [B, 3, 4]
            return self.fc2(torch.relu(self.fc1(h.flatten(1))))  # [B, 3]

    torch.manual_seed(0)
    model = Rows().double()
    model.nvcim_spec = {"in_channels": 1, "image_size": 4}
    task = create_task("irs", model, EXACT, beta=0.3)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1])
    loss, out = task(x, y)
    f1 = model.conv(x.flatten(1, 2))  # [5, 3, 4]: the stage's output, before the ReLU
    f2 = model.fc1(torch.relu(f1).flatten(1))  # [5, 5]
    assert task.heads[0][0].output_size == 4 and task.heads[0][2].in_features == 12  # pooled to min(4, 2048 / 3)
    assert isinstance(task.heads[1][0], nn.Identity) and task.heads[1][2].in_features == 5
    outs = [head[4](torch.relu(head[2](f.flatten(1)))) for head, f in zip(task.heads, (f1, f2))]
    expected = (model(x) - 0.3 * (outs[0] + 0.1 * outs[1])) / 3
    assert torch.allclose(loss, F.cross_entropy(expected, y), atol=1e-12)
    assert torch.allclose(out, model(x), atol=1e-12)


def test_a_stage_returning_a_tuple_or_never_running_is_refused_in_one_line():
    class Attn(nn.Module):
        def __init__(self, stages):
            super().__init__()
            self.stages = stages
            self.attn, self.fc, self.spare = nn.MultiheadAttention(4, 1, batch_first=True), nn.Linear(16, 3), nn.Linear(1, 1)

        def forward(self, x):  # [B, 1, 4, 4]
            h = x.squeeze(1)  # [B, 4, 4]
            return self.fc(self.attn(h, h, h)[0].flatten(1))

    for stages, match in ((("attn", "fc"), "stage 'attn' returns a tuple"),
                          (("spare", "attn", "fc"), r"stages \['spare'\] did not run")):
        model = Attn(stages)
        model.nvcim_spec = {"in_channels": 1, "image_size": 4}
        with pytest.raises(ValueError, match=match) as e:  # ValueError: the CLI's one line, exit 2
            create_task("irs", model, DeviceConfig(sigma=0.3))
        assert "\n" not in str(e.value)


def test_heads_read_a_stage_output_an_in_place_op_changes_later_as_it_was():
    """A stage followed by torch.relu_ (or ReLU(inplace=True)): the head reads the stage's output as the stage gave
    it, not as the in-place op left it (the heads run inside the stages' hooks)."""
    class InPlace(nn.Module):
        stages = ("c1", "c2")

        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu_(self.c1(x))  # in place, after the stage's output was read
            return self.fc(self.c2(h).mean((2, 3)))

    torch.manual_seed(0)
    model = InPlace().double()
    model.nvcim_spec = {"in_channels": 1, "image_size": 4}
    task = create_task("irs", model, DeviceConfig(sigma=0.0, quantize=False), beta=1.0)
    x, y = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    loss, out = task(x, y)
    with torch.no_grad():
        pre = model.c1(x)  # the stage's output before the in-place ReLU
        expected = irs_combine(model(x), [task.heads[0](pre)], 1.0)  # one head: after c1 (none after the last stage)
    assert len(task.heads) == 1
    torch.testing.assert_close(loss.detach(), F.cross_entropy(expected, y), rtol=1e-12, atol=1e-12)
    loss.backward()  # trains too (the head's input must survive the in-place op for backward)
    assert all(p.grad is not None for p in task.heads.parameters()) and model.c1.weight.grad is not None
