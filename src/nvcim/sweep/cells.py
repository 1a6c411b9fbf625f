"""Cells of a sweep: one trained model (or one β search) and its test evaluation each.

    cells = expand(spec)             # every cell of a validated spec, in a stable order
    cell.train_config(beta)          # the TrainConfig that trains it (beta: one β search candidate)

A cell's id, "<model>-w<width>/<dataset>/<label>/s<σ>/seed<seed>" ("…/<label>/seed<seed>" for vanilla,
trained once without noise and tested at every σ of the grid), is also its directory under DIR/cells/;
a variant's label takes the method's place, made file-name safe by `label_slug`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from nvcim.methods import METHODS
from nvcim.sweep.schema import SweepSpec
from nvcim.train import TrainConfig

_LABEL_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
LABEL_MAX = 100  # characters of a variant's directory name


def is_int(v: Any) -> bool:
    """An int, bool excluded (the spec's and the cell files' checks)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float, bool excluded."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def label_slug(label: str) -> str:
    """A label made safe as one path component: anything but [A-Za-z0-9._+-] becomes '_'."""
    return _LABEL_SAFE.sub("_", label.strip())


def fmt_num(x: float) -> str:
    """σ for ids: two decimals when exact (0.30), else the shortest round-tripping form."""
    s = f"{x:.2f}"
    return s if float(s) == x else repr(float(x))


def fmt_beta(b: float) -> str:
    return format(float(b), "g") if float(format(float(b), "g")) == b else repr(float(b))


@dataclass(frozen=True)
class Cell:
    """One trained model (or β search) and its test evaluation."""

    id: str
    model: str
    width: float
    dataset: str
    method: str
    label: str
    params: dict  # fixed method parameters (β excluded when searching)
    sigma: float | None  # training σ; None for vanilla
    seed: int
    test_sigmas: list
    betas: list | None  # β candidates (a search) or None
    train: dict  # full TrainConfig dict (σ, seed, method params of a non-search cell included)
    eval: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Cell":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def train_config(self, beta: float | None = None) -> TrainConfig:
        """The TrainConfig of this cell; `beta`: one candidate of the method's searched hyper-parameter."""
        d = dict(self.train)
        if beta is not None:
            d["method_params"] = {**d["method_params"], searched_param(self.method): float(beta)}
        return TrainConfig.from_dict(d)


def searched_param(method: str) -> str:
    """The hyper-parameter a method's search sets (its `search` trait; OVF: "beta")."""
    return METHODS.get(method).search or "beta"


def _arms(spec: SweepSpec) -> list[tuple[str, str, dict]]:
    """(label, method, fixed params) of every arm: the methods, then the variants."""
    arms = [(m, m, dict(spec.method_params.get(m, {}))) for m in spec.methods]
    for v in spec.variants:
        arms.append((v.label, v.method, {**spec.method_params.get(v.method, {}), **v.params}))
    return arms


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of a validated spec, in a stable order (model, dataset, arm, σ, seed)."""
    cells: list[Cell] = []
    seen: dict[str, str] = {}  # cell directory, case folded (case-insensitive file systems) -> its arm's label
    ev = spec.eval.to_dict()
    grid = list(spec.sigmas)
    for model in spec.models:
        for dataset in spec.datasets:
            prefix = f"{model}-w{spec.width:g}/{dataset}"
            for label, method, params in _arms(spec):
                search, traits = None, METHODS.get(method)
                if traits.search and traits.search not in params and spec.betas is not None:
                    if len(spec.betas) > 1:
                        search = list(spec.betas)
                    else:
                        params = {**params, traits.search: spec.betas[0]}
                slug = label_slug(label)
                sigmas = grid if traits.uses_device else [None]  # trained without noise: one model for every σ
                for sigma in sigmas:
                    if isinstance(ev["test_sigmas"], list):
                        tests = list(ev["test_sigmas"])
                    elif sigma is None or ev["test_sigmas"] == "grid":
                        tests = grid
                    else:
                        tests = [sigma]
                    for seed in spec.seeds:
                        cid = (f"{prefix}/{slug}/seed{seed}" if sigma is None
                               else f"{prefix}/{slug}/s{fmt_num(sigma)}/seed{seed}")
                        if cid.casefold() in seen:
                            raise ValueError(f"sweep spec: labels {seen[cid.casefold()]!r} and {label!r} give cells the "
                                             f"same directory {cid!r} (case aside): make the labels unique")
                        seen[cid.casefold()] = label
                        tparams = dict(params)
                        if search:
                            tparams[traits.search] = search[0]  # validated here; each candidate sets its own
                        try:
                            tc = TrainConfig.from_dict({
                                **spec.train, "model": model, "width": spec.width, "dataset": dataset,
                                "method": method, "method_params": tparams,
                                # vanilla: no noise in training; its validation runs at σ = 0
                                "sigma": 0.0 if sigma is None else sigma, "seed": seed, "progress": False,
                            })
                        except ValueError as exc:
                            raise ValueError(f"sweep spec: cell {cid}: {str(exc).splitlines()[0]}") from None
                        tdict = tc.to_dict()
                        if search:
                            tdict["method_params"] = {k: v for k, v in tdict["method_params"].items() if k != "beta"}
                        cells.append(Cell(
                            id=cid, model=model, width=spec.width, dataset=dataset, method=method, label=label,
                            params={k: v for k, v in tparams.items() if not (search and k == "beta")},
                            sigma=sigma, seed=seed, test_sigmas=tests, betas=search, train=tdict,
                            eval={k: ev[k] for k in ("runs", "seed", "val_runs", "val_seed", "batch_size",
                                                     "keep_beta_checkpoints", "bn_calibration_images") if k in ev},
                        ))
    return cells
