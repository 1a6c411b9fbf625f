"""The one owner of nvcim's result files: their dataclasses, the single writer and the single reader.

    write_result_file(path, EvaluationFile(results=[mc], checkpoint=..., checkpoint_config=..., dataset=...))
    rec = read_result_file(path)   # EvaluationFile | WriteVerifyFile | FailedCellFile | None (not nvcim's)

Three kinds, told apart by "kind" (every file is a JSON object; "format" is the version of its layout,
absent = 1, the layout of every nvcim so far):

    mc_eval            Monte Carlo results of one model (nvcim eval --out, a sweep cell's result.json, the demo):
                       {"kind", "nvcim_version", "checkpoint", "checkpoint_config", "dataset", "split",
                        "device_config", "bn_recalibration", "results": [MCResult.to_dict(), ...],
                        "cell": {...} (sweep cells), "label" (optional), "adc_calibration" (only under a calibrated
                        ADC clip: {"split", "images"}, where each chip's ADC ranges came from), "format"}
    write_verify       nvcim eval --verify-fractions: as mc_eval without "results", plus "write_verify": {...}
                       and "points": [{"fraction", "verified_weights", "verified_devices", "result"}, ...]
    sweep_cell_failed  a sweep cell that raised or diverged: {"kind", "nvcim_version", "cell", "error", "traceback"}
    device_matrix      nvcim eval CKPT... --device-models A,B,C: {"kind", "nvcim_version", "format", "sigma", "runs",
                       "seed", "checkpoints": [...], "datasets": [...], "device_models": [...],
                       "cells": [[{"device_config", "result": MCResult.to_dict()} per device model] per checkpoint],
                       "adc_calibration" (only when a column has a calibrated ADC clip): {"split"}}

A target-precision result (nvcim.evaluate.adaptive) is an MCResult dict with seven more keys ("target_ci",
"ci_half_width", "images_per_chip", "subset_correct", "subset_accuracy", "full_set_chips", "percentiles_from";
"subset_accuracy" since the control variate, absent from earlier target-precision files), absent from
fixed-count results, so format 1 still describes both and earlier readers ignore them; its "runs" is R and
its "per_run_accuracy" the full-set chips' only (the ones its percentiles come from).

The reader checks the structure every consumer relies on (one ValueError naming the file and the field);
it keeps the per-result dicts as written (`EvaluationFile.mc_results()` turns them into MCResult).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from nvcim import __version__
from nvcim.evaluate.results import MCResult, write_results_json

FORMAT = 1  # the layout version this module writes
MC_EVAL, WRITE_VERIFY, CELL_FAILED, DEVICE_MATRIX = "mc_eval", "write_verify", "sweep_cell_failed", "device_matrix"
KINDS = (MC_EVAL, CELL_FAILED, WRITE_VERIFY, DEVICE_MATRIX)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(kw_only=True)
class EvaluatedModel:
    """What every evaluation file says first: the checkpoint evaluated (and its config), on what, how."""

    checkpoint: str | None = None
    checkpoint_config: dict = field(default_factory=dict)
    dataset: str | None = None
    split: str = "test"
    device_config: dict | None = None
    bn_recalibration: dict | None = None
    adc_calibration: dict | None = None  # {"split", "images"} under a calibrated ADC clip (written only then)
    digital_layers: list | None = None  # layer patterns kept digital instead of the checkpoint's (None: its own)
    device_model: str | None = None  # the device model's name as given (`--device-model rram4`; None: none given)
    # nvcim.plugins.fingerprint of the checkpoint's plugins as they were when it was evaluated (a report says when it
    # is not the code it was trained with); "now": filled in when the record is made, None: no plugins
    plugins_sha256: str | None = "now"
    nvcim_version: str = __version__
    format: int = FORMAT
    kind: ClassVar[str] = "?"

    def __post_init__(self):
        if self.plugins_sha256 == "now":
            from nvcim.plugins import fingerprint

            recorded = self.checkpoint_config.get("plugins") if isinstance(self.checkpoint_config, dict) else None
            self.plugins_sha256 = fingerprint(recorded) if isinstance(recorded, list) and recorded else None

    def head(self) -> dict:
        return {"kind": self.kind, "nvcim_version": self.nvcim_version, "checkpoint": self.checkpoint,
                "checkpoint_config": self.checkpoint_config, "dataset": self.dataset, "split": self.split,
                "device_config": self.device_config, "bn_recalibration": self.bn_recalibration,
                **({"adc_calibration": self.adc_calibration} if self.adc_calibration is not None else {}),
                **({"digital_layers": self.digital_layers} if self.digital_layers is not None else {}),
                **({"device_model": self.device_model} if self.device_model is not None else {}),
                **({"plugins_sha256": self.plugins_sha256} if self.plugins_sha256 is not None else {})}


@dataclass(kw_only=True)
class EvaluationFile(EvaluatedModel):
    """An mc_eval file: what was evaluated (checkpoint and its config), on what, and the results per σ."""

    results: list  # MCResult or its dict, one per test σ
    cell: dict | None = None  # a sweep cell's description
    label: str | None = None
    kind: ClassVar[str] = MC_EVAL

    def to_dict(self) -> dict:
        d = {**self.head(), "results": [r.to_dict() if isinstance(r, MCResult) else r for r in self.results]}
        if self.cell is not None:
            d["cell"] = self.cell
        if self.label is not None:
            d["label"] = self.label
        d["format"] = self.format
        return d

    def mc_results(self) -> list[MCResult]:
        return [r if isinstance(r, MCResult) else MCResult.from_dict(r) for r in self.results]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "<results>") -> "EvaluationFile":
        results = d.get("results")
        if not isinstance(results, list) or not results:
            raise ValueError(f"{where}: mc_eval results file has no 'results' list")
        for i, r in enumerate(results):
            if not isinstance(r, dict) or not _is_num(r.get("sigma")) or not _is_num(r.get("mean")):
                raise ValueError(f"{where}: results[{i}] lacks a numeric 'sigma' or 'mean'")
        return cls(results=list(results), cell=_dict_or_none(d, "cell", where), label=d.get("label"),
                   **_head_fields(d, where))


@dataclass(kw_only=True)
class WriteVerifyFile(EvaluatedModel):
    """A write_verify file: accuracy against the fraction of weights programmed with write-verify."""

    points: list  # {"fraction", "verified_weights", "verified_devices", "result": MCResult or its dict}
    write_verify: dict = field(default_factory=dict)
    kind: ClassVar[str] = WRITE_VERIFY

    def to_dict(self) -> dict:
        points = [{**p, "result": p["result"].to_dict() if isinstance(p["result"], MCResult) else p["result"]}
                  for p in self.points]
        return {**self.head(), "write_verify": self.write_verify, "points": points, "format": self.format}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "<results>") -> "WriteVerifyFile":
        points = d.get("points")
        if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("result"), dict)
                                                   for p in points):
            raise ValueError(f"{where}: write_verify file has no 'points' list of results")
        wv = d.get("write_verify")
        if not isinstance(wv, dict):
            raise ValueError(f"{where}: 'write_verify' is not an object")
        return cls(points=list(points), write_verify=dict(wv), **_head_fields(d, where))


@dataclass
class FailedCellFile:
    """A sweep cell that raised or diverged (failed.json)."""

    cell: dict
    error: str
    traceback: str = ""
    nvcim_version: str = __version__
    kind: ClassVar[str] = CELL_FAILED

    def to_dict(self) -> dict:
        return {"kind": self.kind, "nvcim_version": self.nvcim_version, "cell": self.cell, "error": self.error,
                "traceback": self.traceback}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "<results>") -> "FailedCellFile":
        cell = d.get("cell") if isinstance(d.get("cell"), dict) else {}
        return cls(cell=cell, error=str(d.get("error") or ""), traceback=str(d.get("traceback") or ""),
                   nvcim_version=str(d.get("nvcim_version") or "?"))


@dataclass(kw_only=True)
class DeviceMatrixFile:
    """Checkpoints (rows) under device models (columns), Monte Carlo on the same chip seeds in every cell."""

    checkpoints: list  # str per row
    datasets: list  # str per row
    device_models: list  # the names given, per column
    cells: list  # [row][column] {"device_config": dict, "result": MCResult or its dict}
    sigma: float | None = None  # None: each checkpoint's training σ
    runs: int = 0
    seed: int = 0
    rows: list | None = None  # per row {"method": {"name", params...}, "seed", "train_sigma", "epochs", "model":
    # {"name", "width"}, "train_device": the training device's description (None: Gaussian), "recipe": {the training
    # recipe's keys}} (None: unknown; "model", "train_device", "recipe" absent in files written before them)
    adc_calibration: dict | None = None  # {"split"} the calibrated-clip columns' ADC ranges came from (None: no such column)
    nvcim_version: str = __version__
    format: int = FORMAT
    kind: ClassVar[str] = DEVICE_MATRIX

    def to_dict(self) -> dict:
        cells = [[{**c, "result": c["result"].to_dict() if isinstance(c["result"], MCResult) else c["result"]}
                  for c in row] for row in self.cells]
        return {"kind": self.kind, "nvcim_version": self.nvcim_version, "format": self.format, "sigma": self.sigma,
                "runs": self.runs, "seed": self.seed, "checkpoints": self.checkpoints, "datasets": self.datasets,
                "device_models": self.device_models, "cells": cells,
                **({"rows": self.rows} if self.rows is not None else {}),
                **({"adc_calibration": self.adc_calibration} if self.adc_calibration is not None else {})}

    def result(self, row: int, col: int) -> MCResult:
        r = self.cells[row][col]["result"]
        return r if isinstance(r, MCResult) else MCResult.from_dict(r)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "<results>") -> "DeviceMatrixFile":
        rows, cols = d.get("checkpoints"), d.get("device_models")
        cells = d.get("cells")
        if not (isinstance(rows, list) and isinstance(cols, list) and isinstance(cells, list) and len(cells) == len(rows)
                and all(isinstance(r, list) and len(r) == len(cols) for r in cells)
                and all(isinstance(c, dict) and isinstance(c.get("result"), dict) for r in cells for c in r)):
            raise ValueError(f"{where}: device_matrix file needs 'checkpoints', 'device_models' and a matching "
                             "'cells' grid of results")
        info = d.get("rows")
        if info is not None and not (isinstance(info, list) and len(info) == len(rows)
                                     and all(isinstance(r, dict) for r in info)):
            raise ValueError(f"{where}: device_matrix 'rows' must be one object per checkpoint, or absent")
        return cls(checkpoints=list(rows), datasets=list(d.get("datasets") or [None] * len(rows)),
                   device_models=list(cols), cells=[list(r) for r in cells], sigma=d.get("sigma"),
                   runs=int(d.get("runs") or 0), seed=int(d.get("seed") or 0), rows=info,
                   adc_calibration=_dict_or_none(d, "adc_calibration", where),
                   nvcim_version=str(d.get("nvcim_version") or "?"), format=int(d.get("format", 1)))


ResultFile = EvaluationFile | WriteVerifyFile | FailedCellFile | DeviceMatrixFile
_CLASSES = {c.kind: c for c in (EvaluationFile, WriteVerifyFile, FailedCellFile, DeviceMatrixFile)}


def _dict_or_none(d: Mapping, key: str, where: str) -> dict | None:
    v = d.get(key)
    if v is not None and not isinstance(v, dict):
        raise ValueError(f"{where}: '{key}' is a {type(v).__name__}, not an object")
    return v


def _head_fields(d: Mapping[str, Any], where: str) -> dict:
    ck = d.get("checkpoint_config") or {}
    if not isinstance(ck, dict):
        raise ValueError(f"{where}: 'checkpoint_config' is not an object")
    for key, kinds in (("model", (dict, str)), ("data", (dict, str)), ("method", (dict,)), ("device", (dict,))):
        value = ck.get(key) or {}
        if not isinstance(value, kinds):
            raise ValueError(f"{where}: 'checkpoint_config.{key}' is a {type(value).__name__}, not an object")
    fmt = d.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT:
        raise ValueError(f"{where}: results file format {fmt!r} is newer than this nvcim reads ({FORMAT}): "
                         "upgrade nvcim")
    digital = d.get("digital_layers")
    if digital is not None and not (isinstance(digital, list) and all(isinstance(p, str) for p in digital)):
        raise ValueError(f"{where}: 'digital_layers' is not a list of layer-name patterns")
    name = d.get("device_model")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"{where}: 'device_model' is not a name")
    return {"checkpoint": d.get("checkpoint"), "checkpoint_config": ck, "dataset": d.get("dataset"),
            "split": str(d.get("split") or "test"), "device_config": _dict_or_none(d, "device_config", where),
            "bn_recalibration": d.get("bn_recalibration"),
            "adc_calibration": _dict_or_none(d, "adc_calibration", where), "digital_layers": digital,
            "device_model": name,
            "plugins_sha256": d.get("plugins_sha256") if isinstance(d.get("plugins_sha256"), str) else None,
            "nvcim_version": str(d.get("nvcim_version") or "?"),
            "format": fmt}


def parse_result(payload: Any, where: str = "<results>") -> ResultFile | None:
    """The typed form of one parsed results JSON; None when it is not an nvcim result (another kind)."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    cls = _CLASSES.get(kind)
    return None if cls is None else cls.from_dict(payload, where)


def read_result_file(path) -> ResultFile | None:
    """Read and check one results file: ValueError naming the file when it is not valid JSON or malformed."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON results file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return parse_result(payload, str(path))


def write_result_file(path, record: ResultFile) -> Path:
    """Write one results file atomically (the only writer of the three kinds)."""
    return write_results_json(path, record.to_dict())
