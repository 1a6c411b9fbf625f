"""Opt-in slow tests (`make test-slow`): the demo end to end and tighter statistics of the device model."""

import math

import pytest
import torch

import nvcim

pytestmark = pytest.mark.slow


def test_demo_end_to_end(tmp_path, capsys):
    from nvcim.demo import main

    assert main(["--out", str(tmp_path), "--epochs", "1", "--runs", "4"]) == 0
    out = capsys.readouterr().out
    for method in ("vanilla", "noise_injection", "ovf"):
        assert method in out
        assert (tmp_path / "results" / f"{method}.json").is_file()
    assert (tmp_path / "report" / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("sampling", ["fast", "device"])
def test_noise_std_within_half_a_percent_with_ten_million_samples(sampling):
    cfg = nvcim.DeviceConfig(sigma=0.3, sampling=sampling)
    w = torch.randn(10_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    diff = nvcim.program(w, cfg, torch.Generator().manual_seed(1)) - nvcim.quantize(w, cfg)
    expected = cfg.c * 0.3 * w.abs().max().item()
    # relative standard error of a std over 1e7 samples: 1/sqrt(2e7) ≈ 0.02%
    assert diff.std().item() == pytest.approx(expected, rel=0.005)
    assert abs(diff.mean().item()) < 5 * expected / math.sqrt(w.numel())
