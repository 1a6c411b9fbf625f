"""Monte Carlo noisy inference (SPEC §4): accuracy statistics and EKL over R programmed chips.

    cfg = nvcim.DeviceConfig(sigma=0.3)
    res = monte_carlo_evaluate(model, (x, y), cfg, runs=200, seed=0)      # or a data Split
    res.mean, res.std, res.ci95, res.p1, res.ekl, res.per_run_accuracy
    res = monte_carlo_evaluate(model, split, cfg, target_ci=0.5)          # chips until mean ± 0.5 points, 95 %
    curve = robustness_curve(model, split, cfg, default_sigma_grid(0.3))

One run = one programmed chip: every noisy weight gets one draw, kept for the whole test set. Run r's
draws come from a CPU `torch.Generator` seeded by `run_seed(seed, r)` and are taken layer by layer in
module order exactly as `nvcim.draw_chip` takes them, so the same seed gives the same chips, hence
the same per-run accuracies (up to float ties in the logits), whatever the batch size, chunking,
path or device — except under read noise, drawn once per forward (SPEC §8): the images of one batch share a
read, so there the batch size changes the chips' accuracies and their spread (`nvcim.evaluate.plausibility`;
results record it as `read_batch`). The Gaussian draws are the same standard normals scaled by σ, so a robustness curve
uses common random numbers across σ (smooth curves, paired comparisons).

The package, lowest first:
  stats.py       the Student t distribution (no scipy), `summarize`, σ grids, the convergence summary
  results.py     `MCResult` and its outputs: JSON, CSV, the text table
  sampler.py     per-run seeds and generators; `ChipSampler` draws chips into stacked buffers
  batching.py    many chips through one forward: chains of per-image layers directly, others under vmap
  forward.py     scoring chips: per-run counts and EKL, "stacked" (batched) and "chunked" forwards, the probe
  adaptive.py    target-precision mode: full-set pilot, images per chip, Stein's two-stage rule; paired differences
  plausibility.py  warnings of implausible results (non-finite logits, below chance); what a result records of
                 its inputs (the test images' digest, the images per read)
  montecarlo.py  `monte_carlo_evaluate`, `robustness_curve`: checks, the three paths
"""

from nvcim.evaluate.adaptive import DEFAULT_MAX_CHIPS, FIRST_STAGE, PILOT_CHIPS, chip_accuracies, paired_difference
from nvcim.evaluate.forward import LOGITS_PER_ADD
from nvcim.evaluate.plausibility import ImplausibleResultWarning, batches_sha256
from nvcim.evaluate.montecarlo import (
    CHUNKED_BUFFER_BYTES,
    DEFAULT_BATCH,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_RUNS,
    DEFAULT_SEED,
    PATHS,
    monte_carlo_evaluate,
    robustness_curve,
)
from nvcim.evaluate.results import (
    BELOW_CHANCE_MARK,
    CSV_COLUMNS,
    NONFINITE_MARK,
    TABLE_COLUMNS,
    MCResult,
    results_table,
    write_csv,
    write_results_json,
)
from nvcim.evaluate.sampler import RNG_DEVICE, RNG_DEVICES, run_generator, run_seed, subset_indices
from nvcim.evaluate.stats import convergence_summary, default_sigma_grid, summarize, t_cdf, t_quantile

__all__ = [
    "DEFAULT_RUNS",
    "DEFAULT_SEED",
    "DEFAULT_BATCH",
    "MCResult",
    "monte_carlo_evaluate",
    "robustness_curve",
    "default_sigma_grid",
    "convergence_summary",
    "summarize",
    "t_quantile",
    "t_cdf",
    "run_seed",
    "run_generator",
    "paired_difference",
    "chip_accuracies",
    "ImplausibleResultWarning",
    "batches_sha256",
    "subset_indices",
    "write_results_json",
    "results_table",
    "write_csv",
]
