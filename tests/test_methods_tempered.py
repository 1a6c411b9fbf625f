"""Tempered noise injection (nvcim.methods.tempered), and the new methods in sweeps and reports: each searched
method searches its own candidates, and the report labels and orders the arms (tempered NI beside OVF)."""

from __future__ import annotations

import copy
import json

import torch
from torch import nn

from nvcim.core.config import DeviceConfig
from nvcim.methods import METHODS, create_task, method_config
from nvcim.report import load_results
from nvcim.report.common import label_sort_key
from nvcim.sweep import expand, run_sweep, validate_spec


def test_it_is_noise_injection_with_scaled_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4)).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])
    outs = []
    for name, params in (("tempered_noise_injection", {}), ("noise_injection", {"logit_scale": 0.25})):
        task = create_task(name, copy.deepcopy(model), DeviceConfig(sigma=0.3), **params)
        torch.manual_seed(7)  # the same device draw
        outs.append(task(x, y))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    torch.manual_seed(7)
    plain = create_task("noise_injection", copy.deepcopy(model), DeviceConfig(sigma=0.3))(x, y)[1]
    assert torch.allclose(outs[0][1], 0.25 * plain, atol=1e-12)


def test_traits():
    t = METHODS.get("tempered_noise_injection")
    assert method_config(t.name).logit_scale == 0.25
    assert t.search == "logit_scale" and t.search_values == (0.5, 0.25, 0.125, 0.0625) and t.uses_device
    order = sorted(METHODS, key=lambda m: (METHODS.get(m).order, m))
    assert order == ["vanilla", "noise_injection", "ovf", "tempered_noise_injection", "irs", "correctnet"]
    # a searched scale is not part of the label (seeds choosing different scales are one arm)
    assert t.describe({"logit_scale": 0.125}) == "tempered noise injection"
    assert not t.is_paper_recipe({"logit_scale": 0.25})


TRAIN = {"epochs": 1, "limit": 96, "batch_size": 32, "val_runs": 0, "select": "clean", "device": "cpu"}
SPEC = {"name": "new-methods", "models": ["tiny"], "datasets": ["mnist5k"],
        "methods": ["ovf", "tempered_noise_injection", "irs", "correctnet"], "sigmas": [0.2], "seeds": [0],
        "betas": [0.1, 0.01], "train": TRAIN, "eval": {"runs": 2, "val_runs": 2},
        "resources": {"threads_per_cell": 1}}


def test_each_searched_method_searches_its_own_candidates():
    cells = {c.method: c for c in expand(validate_spec(SPEC))}
    assert cells["ovf"].betas == [0.1, 0.01] and cells["irs"].betas == [0.1, 0.01]
    tempered = cells["tempered_noise_injection"]
    assert tempered.betas == [0.5, 0.25, 0.125, 0.0625]  # not OVF's β candidates
    assert "logit_scale" not in tempered.params and "logit_scale" not in tempered.train["method_params"]
    correctnet = cells["correctnet"]  # λ chosen by its chips at σ: a cell per σ, trained without noise
    assert correctnet.betas == [5e-3, 5e-4, 5e-5, 5e-6] and correctnet.sigma == 0.2
    assert correctnet.train_config(5e-4).sigma == 0.2 and "ortho_lambda" not in correctnet.params


def test_correctnet_without_a_search_serves_every_sigma():
    """Without `betas` (or with λ fixed) CorrectNet is trained once, without noise, for every σ, like vanilla."""
    spec = {**SPEC, "sigmas": [0.2, 0.3], "methods": ["correctnet", "vanilla"]}
    del spec["betas"]
    cells = expand(validate_spec(spec))
    assert [(c.method, c.sigma, c.betas) for c in cells] == [("correctnet", None, None), ("vanilla", None, None)]
    assert {c.train_config().sigma for c in cells} == {0.0} and cells[0].test_sigmas == [0.2, 0.3]
    fixed = {**SPEC, "sigmas": [0.2, 0.3], "method_params": {"correctnet": {"ortho_lambda": 1e-3}}}
    (cn,) = [c for c in expand(validate_spec(fixed)) if c.method == "correctnet"]
    assert cn.sigma is None and cn.betas is None and cn.params["ortho_lambda"] == 1e-3


def test_a_fixed_logit_scale_beside_betas_fixes_the_tempered_arm():
    """`betas` drives the β searches; a fixed logit scale for tempered noise injection is no conflict with it
    (scripts/scale_study.sh fixes both for its full-width arm)."""
    spec = {**SPEC, "betas": [1e-3], "method_params": {"tempered_noise_injection": {"logit_scale": 0.125}}}
    cells = {c.method: c for c in expand(validate_spec(spec))}
    assert cells["ovf"].betas is None and cells["ovf"].params["beta"] == 1e-3  # one candidate: no search
    assert cells["tempered_noise_injection"].betas is None
    assert cells["tempered_noise_injection"].params["logit_scale"] == 0.125


def test_sweep_and_report_with_the_new_methods(tmp_path):
    summary = run_sweep(validate_spec(SPEC), tmp_path, progress=False)
    assert summary.exit_code == 0 and len(summary.ok) == 4
    records = load_results(tmp_path)
    by = {r["method"]: r for r in records}
    assert by["tempered_noise_injection"]["method_params"]["logit_scale"] in (0.5, 0.25, 0.125, 0.0625)
    labels = sorted({(r["label"], r["method"]) for r in records}, key=lambda lm: label_sort_key(*lm))
    assert [label for label, _ in labels] == ["OVF", "tempered noise injection", "IRS", "CorrectNet"]
    search = by["correctnet"]["beta_search"]  # λ chosen by the candidates' chips at σ 0.2, not by clean accuracy
    assert search["sigma"] == 0.2 and len(search["candidates"]) == 4
    assert search["parameter"] == "ortho_lambda" and by["tempered_noise_injection"]["beta_search"]["parameter"] == \
        "logit_scale" and by["ovf"]["beta_search"]["parameter"] == "beta"
    assert by["correctnet"]["train_sigma"] == 0.2 and by["correctnet"]["method_params"]["ortho_lambda"] in (
        5e-3, 5e-4, 5e-5, 5e-6)


def test_dry_run_names_each_searched_parameter(tmp_path, capsys):
    from nvcim.cli import main

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = {ln.split()[1].split("/")[2]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pending")}
    assert "β search [0.1, 0.01]" in lines["ovf"] and "logit_scale search" in lines["tempered_noise_injection"]
    assert "λ search [0.005, 0.0005, 5e-05, 5e-06]" in lines["correctnet"]
