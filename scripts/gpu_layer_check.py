"""Layer types on a CUDA device (run by `scripts/repro_gpu.sh --bench`; the CPU suite covers them in tests/):
recurrent layers and their cells, attention, under cuDNN, and the ADC simulation of attention and grouped
convolutions against CPU. For each model: a programmed chip's output against the plain
module reading the drawn weights (torch.func.functional_call), Monte Carlo on the batched and per-chip paths (same
chips), and sensitivity-ranked write-verify (gradients in eval mode). Prints one line per check, "OK" or "FAIL ...",
and any warning PyTorch gives; exit code 1 if a check fails.

    python scripts/gpu_layer_check.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
from torch import nn

import nvcim
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.writeverify import plan_write_verify


class Seq(nn.Module):
    def __init__(self, rnn: nn.Module, features: int):
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(features, 3)

    def forward(self, x):  # x [B, L, 8]
        return self.head(self.rnn(x)[0].mean(1))  # [B, 3]


class Cell(nn.Module):
    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell, self.head = cell, nn.Linear(cell.hidden_size, 3)

    def forward(self, x):  # x [B, L, 8]
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return self.head(state[0] if isinstance(state, tuple) else state)  # [B, 3]


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.head = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0), nn.Linear(8, 3)

    def forward(self, x):  # x [B, L, 8]
        return self.head(self.enc(x).mean(1))


MODELS = {
    "lstm_2layer_bidirectional": lambda: Seq(nn.LSTM(8, 16, 2, batch_first=True, bidirectional=True), 32),
    "gru": lambda: Seq(nn.GRU(8, 16, batch_first=True), 16),
    "lstm_cell": lambda: Cell(nn.LSTMCell(8, 16)),
    "transformer_encoder": Attn,
}


def check(name: str, device: str) -> bool:
    torch.manual_seed(0)
    model = MODELS[name]().to(device).eval()
    x = torch.randn(64, 12, 8, device=device)  # [B, L, 8]
    y = torch.randint(0, 3, (64,), device=device)
    cfg = nvcim.DeviceConfig(sigma=0.3)
    ok = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nvcim.apply_variation_(model, cfg)
        with torch.no_grad():
            chip = nvcim.draw_chip(model, seed=0)
            nvcim.program_chip_(model, seed=0)
            out = model(x)
            with nvcim.variation_disabled(model):
                ref = torch.func.functional_call(model, chip, (x,))
        err = float((out - ref).abs().max())
        ok &= err < 1e-4
        print(f"{name}: chip vs plain module {'OK' if err < 1e-4 else 'FAIL'} (max |diff| {err:.2e})")
        nvcim.remove_variation_(model)
        t0 = time.perf_counter()
        auto = monte_carlo_evaluate(model, (x, y), cfg, runs=16, seed=0)
        t_auto = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop = monte_carlo_evaluate(model, (x, y), cfg, runs=16, seed=0, path="loop")
        t_loop = time.perf_counter() - t0
        same = auto.per_run_correct == loop.per_run_correct
        ok &= same
        print(f"{name}: Monte Carlo {auto.path} path {t_auto:.2f} s, loop {t_loop:.2f} s, same chips "
              f"{'OK' if same else 'FAIL'} ({auto.mean:.2f} vs {loop.mean:.2f} %)")
        try:
            nvcim.apply_variation_(model, cfg)
            plan_write_verify(model, 0.1, by="sensitivity", data=(x, y))
            print(f"{name}: sensitivity write-verify plan OK")
        except Exception as exc:  # noqa: BLE001 (reported, the other checks go on)
            ok = False
            print(f"{name}: sensitivity write-verify plan FAIL ({type(exc).__name__}: {exc})")
        finally:
            nvcim.remove_variation_(model)
    for w in {str(w.message).split("\n")[0] for w in caught}:
        print(f"{name}: warning: {w}")
    return ok


class DepthwiseConv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw, self.pw, self.head = nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.Conv1d(8, 16, 1), nn.Linear(16, 3)

    def forward(self, x):  # x [B, L, 8]
        return self.head(self.pw(torch.relu(self.dw(x.transpose(1, 2)))).mean(2))  # [B, 3]


def check_adc(name: str, make, device: str) -> bool:
    """The ADC simulation (bit-sliced products, grouped convolutions, attention projections) on the device against
    CPU, on one programmed chip in float64 (the same ADC codes: the sums agree to ~1e-12, far below one code)."""
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.randn(16, 12, 8, dtype=torch.float64)  # [B, L, 8]
    with nvcim.device_variation(model, nvcim.DeviceConfig(sigma=0.2, adc_bits=6, tile_rows=8, input_bits=7)):
        nvcim.program_chip_(model, seed=0)
        with torch.no_grad():
            cpu = model(x)
            model.to(device)  # the chip follows the model
            on_device = model(x.to(device)).cpu()
        model.cpu()
    err = float((on_device - cpu).abs().max())
    ok = err < 1e-9 * float(cpu.abs().max())
    print(f"{name}: ADC simulation on {device} vs CPU {'OK' if ok else 'FAIL'} (max |diff| {err:.2e})")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    # TF32 would let cuDNN / cuBLAS round differently per path and flip a close argmax of these untrained models
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print(f"layer checks on {args.device} (torch {torch.__version__})")
    results = [check(name, args.device) for name in MODELS]
    results += [check_adc(name, make, args.device) for name, make in
                (("transformer_encoder", Attn), ("depthwise_conv1d", DepthwiseConv1d))]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
