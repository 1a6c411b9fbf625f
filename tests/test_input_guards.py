"""Guards found by a new-user trial: the smallest --target-ci (and arithmetic that cannot divide by zero or
overflow for any accepted target), the MAX_RUNS cap on --pilot-chips / --max-chips, "-level" device presets
sized for the device bits in force (SPEC §8 multipliers checked in closed form), and a directory given as a
device model. Bad input is one line on stderr naming the flag, exit 2, before any work (the checkpoint paths
here do not exist: the checks come first)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import run_cli, tiny_mnist5k_checkpoint
from nvcim.cli import build_parser
from nvcim.cli.eval import MAX_RUNS
from nvcim.core.config import DeviceConfig, middle_levels
from nvcim.core.variation import VARIATIONS
from nvcim.evaluate.adaptive import (MIN_TARGET_CI, check_target_args, choose_images, first_stage_chips, more_chips,
                                     stein_chips)
from nvcim.io.device_models import device_model, device_model_fields

TINY_SPEC = {"models": ["tiny"], "datasets": ["mnist5k"], "methods": ["vanilla"], "sigmas": [0.1], "seeds": [0]}


def _one_line_error(argv, capsys, match):
    rc, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and match in lines[0], (rc, err)
    return lines[0]


# ---- 1. the smallest target half-width ---------------------------------------------------------
@pytest.mark.parametrize("target", [1e-300, 5e-324, 0.0009])
def test_a_target_below_the_bound_is_refused_by_the_api_cli_and_sweep(tmp_path, capsys, target):
    with pytest.raises(ValueError, match=r"target_ci=.* is too small: use a half-width >= 0.001"):
        check_target_args(target, None, None, None)
    line = _one_line_error(["eval", str(tmp_path / "nope"), "--target-ci", repr(target)], capsys, "--target-ci")
    assert "too small" in line and "0.001" in line
    from nvcim.sweep import validate_spec

    with pytest.raises(ValueError, match=r"sweep spec <t>: key eval.target_ci=.* is too small"):
        validate_spec({**TINY_SPEC, "eval": {"target_ci": target}}, where="<t>")


def test_the_bound_itself_is_accepted_and_its_reason_holds():
    check_target_args(MIN_TARGET_CI, None, None, None)
    # the reason given: at the bound, chips differing by 0.17 points (std) need more than MAX_RUNS chips
    assert (1.96 * 0.17 / MIN_TARGET_CI) ** 2 > MAX_RUNS


@pytest.mark.parametrize("max_chips", [2, 20_000, 10**30, 10**400])
def test_chip_counts_are_finite_integers_for_any_accepted_target(max_chips):
    """At the smallest target and with extreme variances, no ZeroDivisionError / OverflowError (math.ceil(inf))."""
    h = MIN_TARGET_CI
    for variance in (0.0, 1e4, 1e300, math.inf, math.nan):
        n0 = first_stage_chips(variance, h, max_chips)
        assert isinstance(n0, int) and 2 <= n0 <= max(max_chips, 30)
    runs, _, _ = stein_chips([0.0, 100.0] * 15, h, max_chips)  # (t s0 / h)² ~ 1.1e10 chips needed
    assert isinstance(runs, int) and 30 <= runs <= max(max_chips, 30) and (runs == max(max_chips, 30) or runs > 1e10)
    add = more_chips([0.0, 100.0] * 20, h, max_chips)
    assert isinstance(add, int) and 0 <= add <= max(0, max_chips - 40) and (add == max(0, max_chips - 40) or add > 1e10)
    images = choose_images([0.1, 0.9, 0.5], 100, 1e-3, 1e-5, h, max_chips)
    assert isinstance(images, int) and 16 <= images <= 100


# ---- 2. --pilot-chips / --max-chips capped as --runs is ----------------------------------------
@pytest.mark.parametrize("flag", ["--pilot-chips", "--max-chips"])
@pytest.mark.parametrize("value", [str(MAX_RUNS + 1), "100000000", "99999999999999999999"])
def test_chip_counts_above_max_runs_need_force_runs(tmp_path, capsys, flag, value):
    line = _one_line_error(["eval", str(tmp_path / "nope"), "--target-ci", "0.5", flag, value], capsys,
                           f"{flag} {value} is above {MAX_RUNS}")
    assert "--force-runs" in line
    # --force-runs lifts the cap: the error is now the missing checkpoint, after the flags were accepted
    rc, _, err = run_cli(["eval", str(tmp_path / "nope"), "--target-ci", "0.5", flag, value, "--force-runs"], capsys)
    assert rc == 2 and flag not in err and "nope" in err, err
    with pytest.raises(ValueError, match=rf"{flag.strip('-').replace('-', '_')}={value} is above {MAX_RUNS}"):
        kw = {flag.strip("-").replace("-", "_"): int(value)}
        check_target_args(0.5, kw.get("max_chips"), None, kw.get("pilot_chips"), limit=MAX_RUNS)
    check_target_args(0.5, MAX_RUNS, None, MAX_RUNS, limit=MAX_RUNS)  # the cap itself is allowed


# ---- 3. "-level" presets sized for the device bits in force ------------------------------------
def _closed_form_std(factor: float, bits: int) -> list[float]:
    """SPEC §8: σ_level / σ_d = m[l] / sqrt(mean over the levels in use of m²), m = S in the middle band
    0.25 < l / (2^K - 1) < 0.75, else 1; here every level in use once (float64, by hand)."""
    top = 2**bits - 1
    m = [factor if 0.25 < l / top < 0.75 else 1.0 for l in range(top + 1)]
    mean_sq = sum(x * x for x in m) / len(m)
    return [x / math.sqrt(mean_sq) for x in m]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_level_preset_follows_the_callers_device_bits(bits):
    cfg = device_model("rram4-level", defaults={"sigma": 0.2, "weight_bits": 8, "device_bits": bits})
    assert cfg.device_bits == bits and len(cfg.variation_options["multipliers"]) == 2**bits
    assert len(device_model_fields("fefet6-level", bits)["variation_options"]["multipliers"]) == 2**bits


def test_k4_per_level_std_matches_spec_closed_form_and_the_band_ratio():
    cfg = device_model("rram4-level", defaults={"sigma": 0.2, "device_bits": 4})
    counts = torch.ones(16, dtype=torch.float64)  # every level in use, equally often
    std = VARIATIONS["level_dependent"].level_std(counts, cfg)  # [16] per-level std multipliers
    assert torch.allclose(std, torch.tensor(_closed_form_std(4.0, 4), dtype=torch.float64), rtol=1e-12, atol=0)
    mid = torch.tensor(middle_levels(4))
    assert mid.sum() == 8 and mid[4:12].all()  # levels 4..11 of 0..15
    assert torch.allclose(std[mid] / std[~mid].max(), torch.full((8,), 4.0, dtype=torch.float64))
    assert math.isclose(float(std.square().mean()), 1.0, rel_tol=1e-12)  # mean variance over levels = σ_d²
    assert math.isclose(float(std[4]), 4.0 / math.sqrt(8.5), rel_tol=1e-12)


def test_level_preset_in_a_file_uses_the_files_or_the_callers_bits(tmp_path):
    f = tmp_path / "chip.toml"
    f.write_text('preset = "rram4-level"\ndevice_bits = 4\n')
    cfg = device_model(str(f), defaults={"sigma": 0.2, "device_bits": 2})
    assert cfg.device_bits == 4 and len(cfg.variation_options["multipliers"]) == 16
    f.write_text('preset = "rram4-level"\n')
    assert len(device_model(str(f), defaults={"device_bits": 4}).variation_options["multipliers"]) == 16
    f.write_text('preset = "rram4-level"\ndevice_bits = 4\nvariation_options = {multipliers = [1, 2, 2, 1]}\n')
    with pytest.raises(ValueError, match="4 multipliers but device_bits=4"):  # explicit multipliers stay as given
        device_model(str(f))


def test_train_flags_and_sweep_with_4_bit_devices_and_a_level_preset():
    from nvcim.cli.train import config_from_args
    from nvcim.sweep import validate_spec
    from nvcim.sweep.cells import expand

    args = build_parser().parse_args(["train", "--model", "tiny", "--device-bits", "4",
                                      "--device-model", "rram4-level"])
    cfg = config_from_args(args)
    dev = cfg.device_config if isinstance(cfg.device_config, dict) else cfg.device_config.to_dict()
    assert dev["device_bits"] == 4 and len(dev["variation_options"]["multipliers"]) == 16
    spec = validate_spec({**TINY_SPEC, "train": {"device_bits": 4}, "device_models": ["rram4-level"]}, where="<t>")
    cell = expand(spec)[0]
    assert DeviceConfig.from_dict(cell.device).device_bits == 4
    assert len(cell.device["variation_options"]["multipliers"]) == 16


# ---- the CLI on a tiny checkpoint (device models resolve after the checkpoint is loaded) ---------
@pytest.fixture(scope="module")
def ckpt4(tmp_path_factory):
    """A tiny checkpoint with 4-bit devices (M = 8, K = 4) on 40 mnist5k images."""
    return tiny_mnist5k_checkpoint(tmp_path_factory.mktemp("g") / "ck", DeviceConfig(sigma=0.15, device_bits=4))


def test_cli_eval_of_a_4_bit_checkpoint_under_a_level_preset(ckpt4, tmp_path, capsys):
    from nvcim.evaluate.files import read_result_file

    out = tmp_path / "r.json"
    rc, _, err = run_cli(["eval", str(ckpt4), "--device-model", "rram4-level", "--runs", "2", "--no-progress",
                          "--out", str(out)], capsys)
    assert rc == 0, err
    dev = read_result_file(out).device_config
    assert dev["device_bits"] == 4 and dev["variation"] == "level_dependent"
    assert len(dev["variation_options"]["multipliers"]) == 16


def test_a_directory_is_named_as_one(ckpt4, tmp_path, capsys):
    ck = tmp_path / "ck0"
    ck.mkdir()
    with pytest.raises(ValueError, match="is a directory: give a preset or device name"):
        device_model(str(ck))
    line = _one_line_error(["eval", str(ckpt4), "--device-model", str(ck)], capsys, "is a directory")
    assert "does not exist" not in line and ".toml" in line
