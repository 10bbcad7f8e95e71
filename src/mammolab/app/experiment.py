"""The experiment file behind ``mammolab run``: one YAML that describes a whole study.

An experiment names where its data comes from (generated, a CBIS-DDSM download, or a generic
manifest), how to organize and preprocess it, which models and regimes to train, and how to
evaluate, explain and compare them. Every section is validated up front, before any work starts,
so a typo in run 7 of 10 is reported in seconds with the YAML key that holds it, not after hours.

Relative paths are taken from the current working directory (as for every other command).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mammolab.config import StrictModel, config_hash, load_config, load_yaml
from mammolab.data.organize import OrganizeConfig
from mammolab.errors import MammoLabError

__all__ = [
    "DataConfig",
    "EvaluateSection",
    "ExperimentConfig",
    "ExplainSection",
    "PreprocessSection",
    "RunSpec",
    "SynthSection",
    "TrainSection",
    "load_experiment",
    "resolved_runs",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SynthSection(StrictModel):
    """Generate a CBIS-DDSM-shaped download instead of reading one (``mammolab synth``)."""

    patients: int = Field(40, ge=6, le=99999)
    image_size: int = Field(1024, ge=64, le=8192)
    layout: Literal["legacy", "nbia"] = "legacy"
    seed: int = Field(0, ge=0)
    difficulty: Literal["easy", "medium", "hard"] = Field(
        "easy", description="lesion difficulty (mammolab synth --difficulty): easy, medium or hard")

    def args(self) -> dict[str, Any]:
        """The arguments as ``synth.json`` records them (difficulty only when not easy: older outputs stay current)."""
        data = self.model_dump()
        if data["difficulty"] == "easy":
            data.pop("difficulty")
        return data


class DataConfig(StrictModel):
    """Where the images come from: exactly one of ``synth``, ``download`` + ``csv_dir``, or ``manifest``."""

    synth: SynthSection | None = None
    download: Path | None = Field(None, description="CBIS-DDSM download root (DICOM tree)")
    csv_dir: Path | None = Field(None, description="folder with the official case-description CSVs")
    metadata: Path | None = Field(None, description="NBIA metadata.csv of the current download layout")
    manifest: Path | None = Field(None, description="generic CSV (path,label,patient_id[,split,...])")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        sources = [self.synth is not None, self.download is not None or self.csv_dir is not None,
                   self.manifest is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one data source: synth: {...}, download: + csv_dir:, or manifest:")
        if (self.download is None) != (self.csv_dir is None):
            raise ValueError("download: and csv_dir: go together")
        if self.metadata is not None and self.download is None:
            raise ValueError("metadata: applies to a download: only")
        return self


class PreprocessSection(StrictModel):
    """``mammolab preprocess`` options; ``config`` is a preset (full, patch), a YAML path or inline steps."""

    config: str | dict[str, Any] | None = None
    size: tuple[int, int] | None = Field(None, description="(height, width) of the written images")
    bit_depth: Literal[8, 16] | None = None


class RunSpec(StrictModel):
    """One training run: a model or preset name plus any TrainConfig option (``lr``, ``epochs``, ...)."""

    model_config = {**StrictModel.model_config, "extra": "allow"}

    model: str
    name: str | None = Field(None, description="run folder name; default: the preset or model_regime name")

    def options(self) -> dict[str, Any]:
        """The TrainConfig options this run sets (everything but ``name``)."""
        return {"model": self.model, **(self.model_extra or {})}


class TrainSection(StrictModel):
    """Options shared by every run (``defaults``) and the runs themselves."""

    defaults: dict[str, Any] = Field(default_factory=dict)
    runs: list[RunSpec] = Field(min_length=1)


class EvaluateSection(StrictModel):
    split: Literal["train", "val", "test"] = "test"
    tta: bool = False
    n_boot: int = Field(2000, ge=0)


class ExplainSection(StrictModel):
    """Heatmaps for the first ``n`` images of ``split`` of every run (0 = the whole split)."""

    method: Literal["gradcam", "gradcam++", "occlusion"] = "gradcam"
    split: Literal["train", "val", "test"] = "test"
    n: int = Field(8, ge=0)
    target: str = Field("true", description="class each heatmap explains: true (the label), predicted or a class name")

    @field_validator("target", mode="before")
    @classmethod
    def _yaml_true(cls, value: Any) -> Any:
        # YAML reads a bare ``target: true`` as the boolean; it means the label, as written.
        return "true" if value is True else value

    @model_validator(mode="after")
    def _known_target(self) -> ExplainSection:
        from mammolab.data.manifest import classes_for

        allowed = ("predicted", "true", *classes_for("binary"), *classes_for("4class"), "normal")
        if self.target not in allowed:
            raise ValueError(f"target: expected one of {', '.join(allowed)}, got {self.target!r}")
        return self


class CompareSection(StrictModel):
    out: Path | None = Field(None, description="report folder; default OUT/report")


class ExperimentConfig(StrictModel):
    """A whole study: data -> organize -> preprocess -> train -> evaluate -> explain -> compare."""

    name: str = "experiment"
    out: Path
    data: DataConfig
    organize: dict[str, Any] = Field(default_factory=dict, description="OrganizeConfig options")
    preprocess: PreprocessSection | None = Field(default_factory=PreprocessSection,
                                                 description="null skips preprocessing")
    train: TrainSection
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    explain: ExplainSection | None = None
    compare: CompareSection = Field(default_factory=CompareSection)
    workers: int | None = Field(None, ge=1, description="processes for organize/preprocess; default: all cores")

    @property
    def report_dir(self) -> Path:
        return self.compare.out or self.out / "report"


def _check_organize(cfg: ExperimentConfig, source: str) -> None:
    from mammolab.data.organize import ImportConfig

    model = ImportConfig if cfg.data.manifest is not None else OrganizeConfig
    load_config(model, cfg.organize, source=f"{source}: organize")


def resolved_runs(cfg: ExperimentConfig, source: str = "experiment") -> list[tuple[str, Any]]:
    """Each run's folder name and complete :class:`TrainConfig` (defaults < preset < run options)."""
    out: list[tuple[str, Any]] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(cfg.train.runs):
        where = f"{source}: train.runs[{i}]"
        tc = _resolve(cfg.train.defaults, spec.options(), where)
        name = spec.name or tc.display_name
        if not _NAME_RE.match(name):
            raise MammoLabError(f"{where}.name: {name!r} is not a usable folder name (letters, digits, _ . -)")
        if name in seen:
            raise MammoLabError(f"{where}: run name {name!r} is also used by train.runs[{seen[name]}]; "
                                "give one of them a distinct name:")
        seen[name] = i
        out.append((name, tc))
    return out


def _resolve(defaults: dict[str, Any], options: dict[str, Any], where: str) -> Any:
    """A run's TrainConfig; errors name the experiment key (``train.runs[i]: lr: ...``)."""
    from mammolab.train.config import resolve_train_config

    merged = {**defaults, **options}
    try:
        return resolve_train_config(merged)
    except MammoLabError as exc:
        msg = str(exc)
        if msg.startswith("train config: "):
            msg = msg[len("train config: "):]
        raise MammoLabError(f"{where}: {msg}") from None


def load_experiment(path_or_data: str | Path | dict[str, Any] | ExperimentConfig) -> ExperimentConfig:
    """Validate an experiment (YAML path, mapping or model), including every run's train options."""
    if isinstance(path_or_data, ExperimentConfig):
        cfg, source = path_or_data, "experiment"
    else:
        source = str(path_or_data) if isinstance(path_or_data, (str, Path)) else "experiment"
        data = load_yaml(path_or_data) if isinstance(path_or_data, (str, Path)) else dict(path_or_data)
        cfg = load_config(ExperimentConfig, data, source=source)
    _check_organize(cfg, source)
    if cfg.preprocess is not None:
        from mammolab.preprocess.pipeline import PRESETS, load_preprocess_config

        pc = cfg.preprocess.config
        if isinstance(pc, str) and pc not in PRESETS and not Path(pc).is_file():
            raise MammoLabError(f"{source}: preprocess.config: {pc!r} is neither a preset "
                                f"({', '.join(PRESETS)}) nor an existing YAML file")
        try:
            load_preprocess_config(pc, size=cfg.preprocess.size, bit_depth=cfg.preprocess.bit_depth)
        except MammoLabError as exc:
            raise MammoLabError(f"{source}: preprocess: {exc}") from None
    resolved_runs(cfg, source)
    return cfg


def experiment_hash(part: Any) -> str:
    """Hash of one stage's inputs, recorded by the runner to decide 'up to date'."""
    return config_hash(part)
