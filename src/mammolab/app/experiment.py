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

from mammolab.config import StrictModel, check_set_types, config_hash, deep_merge, load_config, load_yaml
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
    "path_problems",
    "resolved_runs",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SynthSection(StrictModel):
    """Generate a CBIS-DDSM-shaped download instead of reading one (``mammolab synth``)."""

    patients: int = Field(40, ge=6, le=99999)
    film_height: int = Field(1024, ge=64, le=8192, description="height of each full mammogram in pixels "
                             "(mammolab synth --film-height; image_size before 0.2, still read with a warning)")
    layout: Literal["legacy", "nbia"] = "legacy"
    seed: int = Field(0, ge=0)
    difficulty: Literal["easy", "medium", "hard"] = Field(
        "easy", description="lesion difficulty (mammolab synth --difficulty): easy, medium or hard")

    @model_validator(mode="before")
    @classmethod
    def _old_key(cls, data: Any) -> Any:
        # the CLI's --image-size of synth became --film-height (one word per idea): the key follows, for one release
        if isinstance(data, dict) and "image_size" in data:
            import sys

            if "film_height" in data:
                raise ValueError("give film_height only (image_size is its old name)")
            print("warning: data.synth.image_size is deprecated and will be removed in the next release; use "
                  "film_height", file=sys.stderr, flush=True)
            data = {("film_height" if k == "image_size" else k): v for k, v in data.items()}
        return data

    @property
    def image_size(self) -> int:
        """``film_height`` under the name :func:`mammolab.data.synth.synthesize` takes it."""
        return self.film_height

    def args(self) -> dict[str, Any]:
        """The arguments as ``synth.json`` records them (difficulty only when not easy, the film height as
        ``image_size``, synthesize's name: older outputs stay current)."""
        data = self.model_dump()
        data = {("image_size" if k == "film_height" else k): v for k, v in data.items()}
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


def load_experiment(path_or_data: str | Path | dict[str, Any] | ExperimentConfig,
                    sets: dict[str, Any] | None = None) -> ExperimentConfig:
    """Validate an experiment (YAML path, mapping or model), including every run's train options.

    ``sets`` (``--set key=value``, nested) is merged over the file section by section; its values are
    also checked strictly (``--set train.defaults.epochs=true`` is an error, not 1 epoch), and errors
    keep naming the file.
    """
    if isinstance(path_or_data, ExperimentConfig):
        if sets:
            path_or_data = path_or_data.model_dump(mode="json", exclude_unset=True)
        else:
            cfg, source = path_or_data, "experiment"
    if not isinstance(path_or_data, ExperimentConfig):
        source = str(path_or_data) if isinstance(path_or_data, (str, Path)) else "experiment"
        data = load_yaml(path_or_data) if isinstance(path_or_data, (str, Path)) else dict(path_or_data)
        merged = deep_merge(data, sets) if sets else data
        cfg = load_config(ExperimentConfig, merged, source=source)
        if sets:
            check_set_types(ExperimentConfig, data, sets)
    _check_organize(cfg, source)
    if sets and isinstance(sets.get("organize"), dict):
        from mammolab.data.organize import ImportConfig

        model = ImportConfig if cfg.data.manifest is not None else OrganizeConfig
        check_set_types(model, cfg.organize, sets["organize"], prefix=("organize",))
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
    runs = resolved_runs(cfg, source)
    defaults = ((sets or {}).get("train") or {}).get("defaults") if isinstance((sets or {}).get("train"), dict) \
        else None
    if isinstance(defaults, dict) and defaults:
        from mammolab.train.config import TrainConfig

        for _, tc in runs:  # every run takes the defaults; the first one whose type is wrong says so
            check_set_types(TrainConfig, tc.model_dump(mode="json"), defaults, prefix=("train", "defaults"))
    return cfg


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a ``mkdir -p`` of ``path`` starts from)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_folder_problem(key: str, path: Path, holds: str) -> str | None:
    """Why ``path`` cannot become (or be) a folder this user writes into; ``None`` when it can."""
    import os

    if path.exists() and not path.is_dir():
        return f"{key}: {path} exists and is a file; expected a folder (it will hold {holds})"
    base = _nearest_existing(path)
    if not base.is_dir():
        return f"{key}: {path} cannot be made: {base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{key}: {path} cannot be written: no write permission on {base}"
    return None


def path_problems(cfg: ExperimentConfig, *, reads: bool = True) -> list[str]:
    """Every path the experiment would read or write that cannot serve, one line each.

    A dry run that says "planned" must not be followed by a traceback on the first real step, so
    what the runner will read (the data source, a preprocess YAML, weights files) must exist with the
    right kind, and what it will write (``out`` and the stage folders under it, ``compare.out``) must
    be a folder this user can create or write into. ``reads=False`` checks only the written paths
    (a real run meets missing data at the stage that reads it, which ``--only`` may skip).
    """
    problems: list[str] = []
    data = cfg.data
    for key, p, kind in (("data.download", data.download, "folder"), ("data.csv_dir", data.csv_dir, "folder"),
                         ("data.metadata", data.metadata, "file"), ("data.manifest", data.manifest, "file")):
        if p is None or not reads:
            continue
        p = Path(p)
        if not p.exists():
            problems.append(f"{key}: {p} is missing (not found); edit the experiment file to point at your data")
        elif kind == "folder" and not p.is_dir():
            problems.append(f"{key}: {p} is a file; expected a folder")
        elif kind == "file" and not p.is_file():
            problems.append(f"{key}: {p} is a folder; expected a file")
    out = Path(cfg.out)
    problem = _writable_folder_problem("out", out, "dataset/, runs/ and report/")
    if problem:
        problems.append(problem)
    else:
        for sub in ("download", "dataset", "dataset-pp", "runs"):
            if (out / sub).exists() and not (out / sub).is_dir():
                problems.append(f"out: {out / sub} exists and is a file; expected the {sub} folder (move the file)")
    if cfg.compare.out is not None:
        problem = _writable_folder_problem("compare.out", Path(cfg.compare.out), "the comparison report")
        if problem:
            problems.append(problem)
    elif (out / "report").exists() and not (out / "report").is_dir():
        problems.append(f"out: {out / 'report'} exists and is a file; expected the report folder (move the file)")
    for i, spec in enumerate(cfg.train.runs if reads else ()):
        opts = {**cfg.train.defaults, **spec.options()}
        w = opts.get("weights")
        if isinstance(w, str) and w.strip().lower() not in ("", "none", "null", "random", "imagenet") \
                and not Path(w).is_file():  # anything else names a weights file (TrainConfig's weights)
            problems.append(f"train.runs[{i}].weights: {w} is missing (not found); expected a .pth, .safetensors or "
                            ".ckpt file, 'imagenet' or 'none'")
    return problems


def experiment_hash(part: Any) -> str:
    """Hash of one stage's inputs, recorded by the runner to decide 'up to date'."""
    return config_hash(part)
