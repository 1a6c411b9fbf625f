"""Sweeps: a grid of training + Monte Carlo evaluation cells, resumable and backend-independent.

    spec = load_spec("experiments/cpu/mnist5k.toml")       # TOML / YAML / JSON, validated
    cells = expand(spec)                                     # list[Cell], stable ids
    summary = run_sweep(spec, "runs/cpu", workers=2)        # backend "local" (default) or "ray"

The package: spec (reading + validating specs), schema (SweepSpec, the validated spec as typed objects,
and its defaults), cells (Cell, expand, labels), files (a sweep directory's files, cell states), cell_run
(running one cell: train or reuse, β search, test, result.json), runner (run_sweep, plan, the DIR checks
and lock), backends (local, process pool, Ray; `register_backend`).

A spec (TOML shown; see experiments/README.md for every key):

    name = "cpu-mnist5k"
    models = ["vgg8"]; width = 0.25; datasets = ["mnist5k"]
    methods = ["vanilla", "noise_injection", "ovf"]
    sigmas = [0.1, 0.2, 0.3]; seeds = [0, 1, 2]
    betas = [1e-1, 1e-2, 1e-3, 1e-4]   # OVF β candidates; one value = no search
    device_models = ["gaussian", "rram4"]   # optional device-model axis: names or DeviceConfig files
    [train]      # TrainConfig fields (epochs, batch_size, lr, optimizer, schedule, limit, ...)
    [eval]       # runs, seed, val_runs, val_seed, batch_size, test_sigmas, keep_beta_checkpoints,
                 # bn_calibration_images, adc_calibration
    [method_params.ovf]   # fixed hyper-parameters of a method for every cell of that method
    [resources]  # threads_per_cell, cpus_per_cell, gpus_per_cell
    [[variants]] # extra arms: label, method, params

Cells. One cell = one trained model (or one β search) + its test evaluation. Its id is
"<model>-w<width>/<dataset>/<label>/s<σ>/seed<seed>" ("…/vanilla/seed<seed>" for vanilla, trained
once per (model, dataset, seed) without noise and tested at every σ of the grid). A variant's label
takes the method's place, made file-name safe (characters other than A-Za-z0-9._+- become '_'); a
label whose name would start with '.' or match another arm's, case aside, is refused, so no two cells
ever share a directory. With `device_models`, every cell exists once per device model, a path segment
after the data set ("<model>-w<width>/<dataset>/<device>/<label>/…"), trained and tested under it
(vanilla: trained without noise as without the axis, once per device model, and tested under it). Files of a cell, under DIR/cells/<id>/:

    cell.json            the cell's full definition (written first; nvcim's files of a partial
                         cell whose definition changed are removed before it runs again, and
                         any other file there is kept)
    checkpoint/          nvcim.io.checkpoint of the model that is tested
    train_state/         while a model trains: its state after the last finished epoch
                         (nvcim.io.train_state); a killed cell's training resumes from there
                         (beta/<β>/train_state/ alike); removed once the checkpoint is written
    beta/<β>/checkpoint/ β search: one model per candidate, and beta/<β>/score.json (its
                         validation score; the marker that this candidate is done, unless
                         it cannot be read: then the candidate is scored again)
    result.json          written LAST, atomically: the cell is done (layout: `result_payload`);
                         one that is not this cell's valid result (e.g. truncated) does not count:
                         the cell runs again, with a warning (`result_problem`)
    failed.json          the cell raised or diverged: {"kind": "sweep_cell_failed", ...}

A reused checkpoint that cannot be loaded or whose config.json has entries of the wrong type is trained
again, with a warning (only its config and weights are removed: a file there that is not nvcim's fails
the cell, naming it). A result with non-finite logits or a mean below chance is recorded (status ok) with
one warning line for the cell. Warnings are shown quiet or not (`run_sweep`: SweepWarning).

Determinism. Every cell seeds everything it draws from its own seed (nvcim.train, nvcim.evaluate),
and runs with a fixed number of torch threads (CPU float results depend on the thread count:
`[resources] threads_per_cell`, default: the machine's cores / workers); so a cell's numbers do not
depend on the order cells run in, on the process that runs them, or on an interruption: a rerun
after a kill (SIGKILL included) skips finished cells, reuses finished checkpoints / β candidates,
resumes a training after its last finished epoch, and ends with results identical to an uninterrupted
run with the same threads_per_cell.

β search (SPEC §3). An OVF cell with several β candidates trains one model per β, scores each by
the Monte Carlo mean accuracy on the VALIDATION split (held out from the training data) at the
training σ with `eval.val_runs` chips (seed `eval.val_seed`), and tests only the best one. Ties go to
the larger β (deterministic; the larger β is the first step of the paper's four-step search).
Candidates whose training diverged are not eligible; if all diverge the cell fails. The same search
serves any method with a searched parameter (`Method.search`: tempered noise injection's logit scale,
CorrectNet's λ over its own candidates); a method trained without noise whose parameter is searched
(CorrectNet) gets one cell per σ, since the candidate its chips favour depends on σ (vanilla, and
CorrectNet with λ fixed, stay one cell for every σ).

Per-chip BatchNorm calibration (REPRODUCTION.md §4d). `eval.bn_calibration_images = N` (default 0: off,
the trained statistics are used) makes every chip, in the test evaluation and in the β search's
validation score alike, re-estimate its BatchNorm statistics from the first N training images with its
own programmed weights before it is scored (`nvcim.batchnorm.ChipCalibration`, batches of 1024), as
`nvcim eval --recalibrate-bn-per-chip N` does; result.json records it as "bn_recalibration", and
reports show such arms apart ("… (BN per chip)").

ADC calibration source. Under a device with a calibrated ADC clip (`adc_clip = "calibrated"`, SPEC §8), every chip
measures its ADC ranges on the first `adc_calibration_images` images of the evaluated split by default
(`eval.adc_calibration = "evaluated"`, unlabeled); `"train"` takes training images instead, in the test evaluation
and the β search's validation score alike, as `nvcim eval --adc-calibration train` does; result.json records the
source as "adc_calibration": {"split", "images"}. "train" without such a device in any cell is refused.
"""

from nvcim.sweep.backends import BACKENDS, RAY_MISSING, default_threads, register_backend, run_pool, run_ray
from nvcim.sweep.cell_run import CellDiverged, record_failure, result_payload, run_cell
from nvcim.sweep.cells import LABEL_MAX, Cell, expand, fmt_beta, fmt_num, label_slug
from nvcim.sweep.files import (
    CELL_FILE,
    FAILED_FILE,
    LOCK_FILE,
    RESULT_FILE,
    SCORE_FILE,
    SPEC_JSON,
    TOKEN_FILE,
    cell_dir,
    cell_state,
    prepare_cell_dir,
    result_problem,
)
from nvcim.sweep.runner import (
    SweepSummary,
    check_data,
    check_sweep_dir,
    plan,
    prepare_out_dir,
    run_sweep,
    SweepWarning,
    is_spec_record,
    stale_cells,
    sweep_lock,
)
from nvcim.sweep.schema import EVAL_DEFAULTS, RESOURCE_DEFAULTS, EvalOptions, Resources, SweepSpec, Variant
from nvcim.sweep.spec import SPEC_KEYS, SWEEP_SET, VARIANT_KEYS, load_spec, read_spec_file, validate_spec

__all__ = [
    "SweepSpec",
    "EvalOptions",
    "Resources",
    "Variant",
    "Cell",
    "SweepSummary",
    "SweepWarning",
    "load_spec",
    "read_spec_file",
    "validate_spec",
    "expand",
    "plan",
    "stale_cells",
    "run_cell",
    "run_sweep",
    "register_backend",
    "cell_dir",
    "cell_state",
    "result_problem",
    "check_data",
    "check_sweep_dir",
    "label_slug",
    "default_threads",
]
