"""Training: the config of one run (config.py), checks made before it (checks.py), and the loop (loop.py).

    cfg = TrainConfig(model="vgg8", width=0.25, dataset="mnist5k", method="ovf",
                      method_params={"beta": 1e-3}, sigma=0.3, epochs=3)
    result = train(cfg, out_dir="runs/ovf-0.3")     # TrainResult(status, model, metrics, checkpoint)
"""

from nvcim.train.checks import check_model_fits_data, check_out_dir, resolve_device, tune_malloc
from nvcim.train.config import (DEFAULT_DEVICE, DEFAULTS, DEVICE_KEYS, DEVICES, FIELDS, OPTIMIZERS, PRESETS,
                                SCHEDULES, SELECTIONS, TrainConfig, load_train_config, preset_config,
                                read_config_file)
from nvcim.train.loop import (REASON_LOSS, REASON_STATE, REASON_TEST, REASON_VAL, STATUS_DIVERGED, STATUS_OK,
                              TEST_MC_SEED, VAL_MC_SEED, TrainResult, train)
from nvcim.train.resume import resume_problem

__all__ = [
    "TrainConfig", "TrainResult", "train", "preset_config", "load_train_config", "read_config_file",
    "check_model_fits_data", "check_out_dir", "resolve_device", "tune_malloc", "PRESETS", "FIELDS", "DEFAULTS",
    "DEVICE_KEYS", "DEFAULT_DEVICE", "DEVICES", "OPTIMIZERS", "SCHEDULES", "SELECTIONS", "STATUS_OK",
    "STATUS_DIVERGED", "REASON_LOSS", "REASON_STATE", "REASON_VAL", "REASON_TEST", "VAL_MC_SEED", "TEST_MC_SEED",
    "resume_problem",
]
