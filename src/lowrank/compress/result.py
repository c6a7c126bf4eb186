"""What a compression run measured: per-module ranks, parameters, errors and timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModuleReport:
    """One targeted matrix after compression."""

    name: str
    out_features: int
    in_features: int
    rank: int | None  # None: left dense
    params_before: int
    params_after: int
    rel_output_error: float | None  # ||(W - W')X||_F / ||W X||_F on calibration data
    rel_weight_error: float
    energy_kept: float  # fraction of the method's weighted spectral energy kept
    spectrum: list[float] = field(repr=False, default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressResult:
    """Returned by :func:`lowrank.compress`; ``to_dict`` is the core of ``report.json``."""

    method: dict[str, Any]
    keep_target: float | None
    keep_actual: float
    targeted_params_before: int
    targeted_params_after: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    modules: list[ModuleReport]
    allocation: dict[str, Any]
    timings: dict[str, float]
    calibration: dict[str, Any]
    tag: str = "training_free"

    @property
    def ranks(self) -> dict[str, int | None]:
        return {m.name: m.rank for m in self.modules}

    def to_dict(self, spectra: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not spectra:
            for m in out["modules"]:
                m.pop("spectrum", None)
        out["compression_ratio"] = 1.0 - self.keep_actual
        return out

    def summary(self) -> str:
        errors = [m.rel_output_error for m in self.modules if m.rel_output_error is not None]
        mean_err = f"{sum(errors) / len(errors):.4f}" if errors else "n/a"
        factored = sum(m.rank is not None for m in self.modules)
        return (f"{self.method['method']}: keep {self.keep_actual:.4f} of targeted parameters "
                f"(target {self.keep_target}), {factored}/{len(self.modules)} matrices "
                f"factorized, whole model {self.params_before:,} -> {self.params_after:,} "
                f"parameters, mean relative output error {mean_err}")
