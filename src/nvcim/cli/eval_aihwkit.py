"""`nvcim eval CKPT --device-model aihwkit:KIND[?KEY=VALUE&...] [--time T]`: Monte Carlo under one of aihwkit's
inference noise models (nvcim.interop.aihwkit: convert_to_analog once, program_analog_weights per chip,
drift_analog_weights to T), with nvcim's statistics, table, JSON (--out) and CSV (--csv)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nvcim.cli.eval import note_few_chips
from nvcim.cli.eval_data import digital_override, load_for_eval
from nvcim.evaluate import results_table, write_csv
from nvcim.evaluate.files import EvaluationFile, write_result_file
from nvcim.interop.aihwkit import aihwkit_device, require


def run_aihwkit(args: argparse.Namespace, ckpt: Path, *, runs: int, seed: int, batch_size: int, limit: int | None,
                progress: bool) -> int:
    device = aihwkit_device(args.device_model, t_inference=args.time)  # a bad spec: one line, before loading
    require()
    if args.device != "cpu":
        raise ValueError("aihwkit device models run on CPU here: drop --device cuda")
    if args.chunk_runs is not None:  # never a flag silently ignored
        raise ValueError("--chunk-runs sets how nvcim's own Monte Carlo batches chips; aihwkit's runs one chip at a "
                         "time: drop it")
    loaded = load_for_eval(ckpt, dataset=args.dataset, data_root=args.data_root, split=args.split, limit=limit,
                           digital=digital_override(args.digital_layers))
    res = device.monte_carlo(loaded.model, loaded.split, runs=runs, seed=seed, batch_size=batch_size, progress=progress)
    spec = loaded.config.get("model", {})
    print(f"{ckpt}: {spec.get('name', '?')} on {loaded.dataset} ({args.split}, {res.n_samples} images), {runs} chips "
          f"under {device.name} ({device.to_dict()['noise_model']} {device.noise or 'defaults'}), t_inference "
          f"{device.t_inference:g} s, tile {device.tile}, io {device.io}, drift compensation {device.compensation}, "
          f"seed {seed}; σ does not apply (column sigma 0), 'quantized' = analog model before programming")
    print(results_table([res]))
    note_few_chips([res])
    record = EvaluationFile(results=[res], checkpoint=str(ckpt), checkpoint_config=loaded.config,
                            dataset=loaded.dataset, split=args.split, device_config=device.to_dict(),
                            digital_layers=digital_override(args.digital_layers))
    if args.out:
        write_result_file(args.out, record)
        print(f"wrote {args.out}")
    if args.csv:
        write_csv(args.csv, [res], device_model=device.spec)  # every setting, --time's included
        print(f"wrote {args.csv}")
    return 0
