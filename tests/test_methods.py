"""Tests of the training methods: OVF equals Eq. 1 by hand, gradients, β = 0, BatchNorm policy."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nvcim
from nvcim.core.config import DeviceConfig
from nvcim.methods import METHODS, OVFConfig, create_task, method_config, method_from_dict, method_to_dict

SIGMA = 0.3


def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4))


def bn_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    m.stages, m.nvcim_spec = ("2", "3"), {"in_channels": 2, "image_size": 4}  # for IRS's heads
    return m


X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3, 1])


def test_ovf_total_output_equals_eq1_by_hand():
    model = linear_model()
    cfg = DeviceConfig(sigma=SIGMA)
    task = create_task("ovf", model, cfg, beta=0.1)
    torch.manual_seed(123)
    loss, out = task(X, Y)

    # by hand: the same global-RNG draws in the same order, σ, σ+Δσ, σ+2Δσ, σ+3Δσ
    w, b = model[0].weight.detach(), model[0].bias.detach()
    torch.manual_seed(123)
    outs = [F.linear(X, nvcim.program(w, cfg.replace(sigma=s)), b) for s in (0.3, 0.35, 0.4, 0.45)]
    expected = 0.25 * outs[0] - 0.25 * 0.1 * (0.01 * outs[1] + 0.1 * outs[2] + 1.0 * outs[3])
    torch.manual_seed(123)
    assert torch.allclose(task.combine(*task.outputs(X)), expected, atol=1e-6)  # O_total, the loss's logits
    assert torch.allclose(loss, F.cross_entropy(expected, Y), atol=1e-6)
    assert torch.allclose(out, outs[0], atol=1e-6)  # what the train accuracy counts: the deployed backbone's
    # the four forwards really used different noise
    assert not torch.allclose(outs[1], outs[2])


def test_gradients_flow_through_all_n_plus_1_forwards():
    # one linear layer with straight-through noise: dL/dW = (a_b - a_f β Σγ) · Gᵀ x, G = dL/dO_total
    beta = 0.5
    model = linear_model()
    task = create_task("ovf", model, DeviceConfig(sigma=SIGMA), beta=beta)
    torch.manual_seed(0)
    loss, _ = task(X, Y)
    loss.backward()
    torch.manual_seed(0)
    with torch.no_grad():
        total = task.combine(*task.outputs(X))  # O_total of that step: the same draws
    g = (torch.softmax(total, 1) - F.one_hot(Y, 4)) / len(Y)  # [B, 4]
    coef = 0.25 - 0.25 * beta * (0.01 + 0.1 + 1.0)
    assert torch.allclose(model[0].weight.grad, coef * g.T @ X, atol=1e-6)
    assert torch.allclose(model[0].bias.grad, coef * g.sum(0), atol=1e-6)

    # deeper model: every variational forward is in the graph (changing β changes the gradient)
    grads = []
    for beta in (0.0, 1.0):
        m = bn_model()
        t = create_task("ovf", m, DeviceConfig(sigma=SIGMA), beta=beta)
        torch.manual_seed(0)
        t(torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 2, 0]))[0].backward()
        grads.append(m[0].weight.grad.clone())
    assert not torch.allclose(*grads)


def test_beta_zero_is_noise_injection_with_scaled_logits():
    xb = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    yb = torch.tensor([0, 1, 2, 0])
    results = []
    for name, params in (("ovf", dict(beta=0.0)), ("noise_injection", dict(logit_scale=0.25))):
        m = bn_model()
        t = create_task(name, m, DeviceConfig(sigma=SIGMA), **params)
        torch.manual_seed(9)
        loss, out = t(xb, yb)
        loss.backward()
        results.append((loss.detach(), out.detach(), [p.grad.clone() for p in m.parameters()], m[1].running_mean.clone()))
    (l1, o1, g1, r1), (l2, o2, g2, r2) = results
    assert torch.equal(l1, l2) and torch.equal(0.25 * o1, o2) and torch.equal(r1, r2)  # OVF's out: the backbone's
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("policy", ["backbone", "all"])
def test_bn_policy(policy):
    xb = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    yb = torch.zeros(8, dtype=torch.long)
    # reference: the backbone forward alone, same RNG state
    ref = bn_model()
    nvcim.apply_variation_(ref, DeviceConfig(sigma=SIGMA))
    torch.manual_seed(5)
    ref(xb)
    m = bn_model()
    task = create_task("ovf", m, DeviceConfig(sigma=SIGMA), beta=1e-2, bn_policy=policy)
    torch.manual_seed(5)
    task(xb, yb)
    same = torch.equal(m[1].running_mean, ref[1].running_mean) and torch.equal(m[1].running_var, ref[1].running_var)
    if policy == "backbone":
        assert same and int(m[1].num_batches_tracked) == 1
    else:
        assert not same and int(m[1].num_batches_tracked) == 4


def test_vanilla_uses_clean_weights_and_finish_returns_plain_backbone():
    m = linear_model()
    t = create_task("vanilla", m)
    loss, out = t(X, Y)
    assert torch.equal(out, m(X))
    for name in ("noise_injection", "ovf"):
        m = linear_model()
        t = create_task(name, m, DeviceConfig(sigma=SIGMA))
        assert nvcim.noisy_modules(m)
        plain = t.finish()
        assert plain is m and not nvcim.noisy_modules(m)
        assert torch.equal(m(X), linear_model()(X))


def test_ovf_defaults_follow_the_paper():
    c = OVFConfig()
    assert (c.n_variational, c.delta_sigma, c.beta) == (3, 0.05, 1e-3)
    assert c.gamma == (0.01, 0.1, 1.0)
    assert c.backbone_weight == c.feedback_weight == 0.25
    c5 = OVFConfig(n_variational=5)
    assert c5.gamma[-1] == 1.0 and c5.gamma[0] == pytest.approx(1e-4) and c5.backbone_weight == pytest.approx(1 / 6)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("ovf", dict(n_variational=0), "n_variational"),
        ("ovf", dict(beta=-1), "beta"),
        ("ovf", dict(beta=True), "beta"),
        ("ovf", dict(gammas=(1.0,)), "gammas"),
        ("ovf", dict(bn_policy="none"), "bn_policy"),
        ("ovf", dict(alpha=1), "alpha"),
        ("ovf", dict(beta=float("inf")), "beta"),
        ("ovf", dict(delta_sigma=float("inf")), "delta_sigma"),
        ("ovf", dict(a_b=True), "a_b"),
        ("ovf", dict(a_b=-1), "a_b"),
        ("ovf", dict(a_f=float("inf")), "a_f"),
        ("ovf", dict(gammas=(float("nan"), 1.0, 1.0)), "gammas"),
        ("ovf", dict(gammas="abc"), "gammas"),
        ("ovf", dict(gammas=0.5), "gammas"),
        ("noise_injection", dict(logit_scale=0), "logit_scale"),
        ("noise_injection", dict(logit_scale=float("inf")), "logit_scale"),
        ("sgd", {}, "unknown method"),
    ],
)
def test_bad_method_params(name, params, match):
    with pytest.raises(ValueError, match=match):
        method_config(name, **params)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_round_trips_and_trains(name):
    mcfg = method_config(name)
    assert method_from_dict(method_to_dict(mcfg)) == mcfg
    m = bn_model()
    before = copy.deepcopy(m.state_dict())
    t = create_task(name, m, DeviceConfig(sigma=SIGMA))
    params = list(t.parameters())  # the task's: the backbone's and any the method adds (IRS heads)
    assert {id(p) for p in m.parameters()} <= {id(p) for p in params}
    opt = torch.optim.SGD(params, lr=0.1)
    loss, out = t(torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 2, 0]))
    assert out.shape == (4, 3) and torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(before["0.weight"], m.state_dict()["0.weight"])
    own = [p for p in params if all(p is not q for q in m.parameters())]
    assert all(p.grad is not None for p in own)  # what the method adds trains with the backbone


@pytest.mark.parametrize("method,params", [("noise_injection", {}), ("ovf", {"beta": 0.1})])
def test_censored_training_noise_clips_every_device_but_only_in_training(method, params):
    """censor=0 keeps each device's z <= 0: every training weight moves toward zero (|W_p| <= |W_d| with the
    sign of W), while evaluation draws the plain Gaussian device, which moves weights both ways."""
    model = linear_model()
    model[0].weight.data.mul_(10)  # far from 0, so the sign of W is unambiguous
    cfg = DeviceConfig(sigma=SIGMA)
    task = create_task(method, model, cfg, censor=0.0, **params)
    assert task.device_cfg.variation == "right_censored_gaussian" and task.device_cfg.variation_options == {"threshold": 0.0}
    w = model[0].weight.detach()
    w_d = nvcim.quantize(w, cfg)
    for seed in range(5):
        w_p = nvcim.draw_chip(model, seed=seed)["0.weight"]  # the layer's own (training) device
        assert (torch.sign(w) * (w_p - w_d) <= 1e-7).all()
    loss, _ = task(X, Y)
    loss.backward()  # trains as usual
    assert model[0].weight.grad is not None
    # validation while the task is live: Monte Carlo sets every layer to the plain device it is given (both ways)
    from nvcim.evaluate.montecarlo import _controllers_for  # what monte_carlo_evaluate runs its chips under

    with _controllers_for(model, cfg):
        moved = torch.stack([torch.sign(w) * (nvcim.draw_chip(model, seed=s)["0.weight"] - w_d) for s in range(3)])
    assert (moved > 1e-6).any() and (moved < -1e-6).any()
    assert (torch.sign(w) * (nvcim.draw_chip(model, seed=0)["0.weight"] - w_d) <= 1e-7).all()  # training device back
    # evaluation: the device as it is, plain Gaussian
    from nvcim.evaluate import monte_carlo_evaluate

    res = monte_carlo_evaluate(task.finish(), (X, Y), cfg, runs=2, seed=0)
    assert res.sigma == SIGMA
    plain = nvcim.draw_chip(nvcim.apply_variation_(copy.deepcopy(model), cfg), seed=0)["0.weight"]
    assert (torch.sign(w) * (plain - w_d) > 0).any() and (torch.sign(w) * (plain - w_d) < 0).any()


def test_censor_validation():
    with pytest.raises(ValueError, match="noise_injection censor=inf is invalid"):
        method_config("noise_injection", censor=float("inf"))
    with pytest.raises(ValueError, match="ovf censor=-1 is invalid"):
        method_config("ovf", censor=-1)
    with pytest.raises(ValueError, match="method 'vanilla' has no parameter"):
        method_config("vanilla", censor=1.0)
    with pytest.raises(ValueError, match="but the device variation is 'right_censored_gaussian'"):
        create_task("noise_injection", linear_model(), DeviceConfig(sigma=0.1, variation="right_censored_gaussian"),
                    censor=1.0)
    assert method_from_dict(method_to_dict(method_config("ovf", censor=0.5))).censor == 0.5


def test_a_noisy_weight_the_model_reads_itself_is_said_at_the_first_training_step():
    """A new user's model read `self.fc.weight` with F.linear: noise-injection training from Python kept that layer
    clean without a word (only Monte Carlo's coverage check caught it, later)."""
    import warnings

    import torch.nn.functional as F

    class ReadsItself(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return F.linear(torch.relu(self.body(x)), self.fc.weight, self.fc.bias)

    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    task = create_task("noise_injection", ReadsItself(), DeviceConfig(sigma=0.2))
    with pytest.warns(RuntimeWarning, match=r"1 noisy weight\(s\) were not read through their layers .*fc\.weight"):
        task(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task(x, y)  # said once
    plain = create_task("ovf", nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), DeviceConfig(sigma=0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain(x, y)


@pytest.mark.parametrize("name", ["ovf", "irs"])
def test_a_task_returns_the_deployed_models_logits_not_the_combined_output(name):
    """The train accuracy counted OVF's O_total and IRS's heads-and-backbone combination, not the model that is
    deployed (a review: IRS 20.0 % recorded against 10.6 % for its backbone, the two agreeing on 77 % of images)."""
    from nvcim.models import create_model

    torch.manual_seed(0)
    model = create_model("vgg8", 10, 1, width=0.125, image_size=28)
    task = create_task(method_config(name, beta=0.5), model, DeviceConfig(sigma=0.0))  # σ 0: one output per input
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, out = task(x, y)
    with torch.no_grad():
        backbone = model(x)  # train mode, as the step: batch statistics
    torch.testing.assert_close(out.detach(), backbone)
    assert not torch.allclose(F.cross_entropy(backbone, y), loss.detach())  # the loss is the combination's
