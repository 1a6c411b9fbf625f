"""The device-model matrix: models (rows) under device models (columns), every cell a Monte Carlo
evaluation with the same chip seeds (common random numbers), so that differences between columns are
the devices', not the draws' (columns are drawn alike: `common_draws`). A column is a DeviceConfig, or any device object with
`monte_carlo(model, data, runs=, seed=, batch_size=, progress=) -> MCResult` and `to_dict()` (e.g.
`nvcim.interop.aihwkit.AihwkitDevice`: aihwkit's noise models, seeded from the same run seeds).

    rec = device_matrix([("ckpt-a", model_a, test_a), ...], ["gaussian", "rram4"],
                        configs=lambda row, name: device_model(name, ...), runs=200, seed=0)
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

from torch import nn

from nvcim.core.config import DeviceConfig
from nvcim.core.variation import VARIATIONS
from nvcim.evaluate.files import DeviceMatrixFile
from nvcim.evaluate.montecarlo import DEFAULT_BATCH, monte_carlo_evaluate
from nvcim.evaluate.partial import PartialResults
from nvcim.evaluate.plausibility import warn_below_chance
from nvcim.evaluate.stats import fmt_percentile


def device_matrix(rows: Sequence[tuple[str, str, nn.Module, Any]], device_models: Sequence[str],
                  configs: Callable[[int, str], Any], *, runs: int, seed: int,
                  batch_size: int = DEFAULT_BATCH, sigma: float | None = None, progress: bool = False,
                  row_info: Sequence[dict] | None = None, adc_data: Sequence[Any] | None = None,
                  adc_split: str | None = None, say: Callable[[str], None] = lambda line: None,
                  partial: PartialResults | None = None, key: Callable[[int, str], dict] | None = None
                  ) -> DeviceMatrixFile:
    """rows: (checkpoint name, data set name, model, data); configs(row index, device model name) gives the
    device of that cell (a DeviceConfig or a device object, module docstring). Every cell runs `runs` chips from
    `seed`. row_info: per row what trained it ({"method": {"name", params...}, "seed", "train_sigma", "epochs"}), so that
    reports pair arms by seed. adc_data: per row, the data a calibrated ADC clip's chips calibrate on
    (`monte_carlo_evaluate`'s adc_calibration; None: the evaluated images), named adc_split in the file.
    partial: finished cells of an interrupted run (nvcim.evaluate.partial), each under key(row index, device model
    name): a cell found there is taken, every cell evaluated here is put there."""
    cells, calibrated = [], False
    for i, (name, _, model, data) in enumerate(rows):
        row = []
        given = [configs(i, dm) for dm in device_models]
        for dm, cfg, asked in zip(device_models, common_draws(given), given):
            calibrated |= _calibrated(cfg)
            keep = partial is not None and isinstance(cfg, DeviceConfig)  # another simulator's chips: not ours
            piece = None if not keep else key(i, dm) if cfg is asked else {**key(i, dm), "device": cfg.to_dict()}
            res = partial.get(piece) if keep else None
            kept = res is not None
            if res is None and isinstance(cfg, DeviceConfig):
                own = adc_data[i] if adc_data is not None and _calibrated(cfg) else None
                res = monte_carlo_evaluate(model, data, cfg, runs=runs, seed=seed, batch_size=batch_size,
                                           progress=progress, adc_calibration=own)
            elif res is None:  # another simulator's device (module docstring)
                res = cfg.monte_carlo(model, data, runs=runs, seed=seed, batch_size=batch_size, progress=progress)
            if keep and not kept:
                partial.put(piece, res)
            if kept and res.nonfinite_runs:  # as the evaluation that made it warned (nvcim.evaluate.montecarlo)
                warnings.warn(f"nvcim: non-finite logits (NaN / inf) from {res.nonfinite_runs} of {res.chips_scored} chips at "
                              f"σ={res.sigma:g} ({name} under {dm}, kept from an interrupted run); those images count "
                              "as wrong, so the accuracy is not meaningful", RuntimeWarning, stacklevel=2)
            if kept:
                warn_below_chance([res], f" ({name} under {dm}, kept from an interrupted run)", stacklevel=2)
            say(f"{name} under {dm}: {res.mean:.2f} % [{res.ci95[0]:.2f}, {res.ci95[1]:.2f}], p5 {fmt_percentile(res.p5, 5.0, res.percentile_chips)}"
                + (f" (kept from an interrupted run: {partial.dir})" if kept else ""))
            row.append({"device_config": cfg.to_dict(), "result": res})
        cells.append(row)
    return DeviceMatrixFile(checkpoints=[r[0] for r in rows], datasets=[r[1] for r in rows],
                            device_models=list(device_models), cells=cells, sigma=sigma, runs=runs, seed=seed,
                            rows=None if row_info is None else [dict(r) for r in row_info],
                            adc_calibration={"split": adc_split or "evaluated"} if calibrated else None)


def _per_device(cfg: DeviceConfig) -> bool:
    """Whether a device draws each device's level (ADCs, sampling="device", a kind without a per-weight draw)."""
    return cfg.sampling == "device" or cfg.sliced_mvm or not VARIATIONS[cfg.variation].fast_path_exact


def common_draws(devices: Sequence[Any]) -> list[Any]:
    """The columns' devices, drawn alike: when one draws per device (an ADC column), the others that would draw one
    Gaussian per weight (the same distribution, other random numbers) draw per device too (sampling="device"), so
    that every column scores the same chips (common random numbers across columns, not only down each column)."""
    if not any(isinstance(d, DeviceConfig) and _per_device(d) for d in devices):
        return list(devices)
    return [d.replace(sampling="device") if isinstance(d, DeviceConfig) and d.sampling == "auto" and not _per_device(d)
            else d for d in devices]


def _calibrated(cfg) -> bool:
    """Whether a column's device calibrates its ADC ranges (a DeviceConfig with a calibrated clip)."""
    return isinstance(cfg, DeviceConfig) and cfg.calibrated_adc
