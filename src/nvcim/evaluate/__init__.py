"""Monte Carlo noisy inference (SPEC §4): the package's public names (the code is in montecarlo.py)."""

from nvcim.evaluate.montecarlo import (
    BELOW_CHANCE_MARK,
    CHUNKED_BUFFER_BYTES,
    CSV_COLUMNS,
    DEFAULT_MEMORY_BUDGET,
    LOGITS_PER_ADD,
    NONFINITE_MARK,
    PATHS,
    RNG_DEVICE,
    RNG_DEVICES,
    TABLE_COLUMNS,
    MCResult,
    convergence_summary,
    default_sigma_grid,
    monte_carlo_evaluate,
    results_table,
    robustness_curve,
    run_generator,
    run_seed,
    summarize,
    t_cdf,
    t_quantile,
    write_csv,
    write_results_json,
)
from nvcim.evaluate.montecarlo import __all__
