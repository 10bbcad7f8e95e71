"""The search space: a YAML mapping of train-config fields to Optuna distributions.

The classic study's EfficientNet-B3 search lived in a notebook and only its winner survived. Here
the space is data, so it can be reviewed, versioned and edited without touching code::

    lr:           {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    optimizer:    {type: categorical, choices: [adamw, adam, sgd]}
    batch_size:   {type: categorical, choices: [16, 32]}
    head_sizes:   {type: categorical, choices: [[], [256], [512, 128]]}
    epochs_fixed: ...  # unknown key -> one MammoLabError naming it

Every key must name a field of the train config (nested fields with dots, e.g. ``augment.strength``)
or one of the documented aliases in :data:`ALIASES`; a typo is an error, never a silently ignored
parameter. Each bound and each choice is also validated against the train config before the first
trial, so ``optimizer: {choices: [rmsprop]}`` fails at once instead of after an hour of trials.

Categorical choices may be lists or mappings (head sizes are lists); Optuna only stores scalars, so
those choices are stored as their JSON text and decoded back by :meth:`SearchSpace.decode`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from mammolab.config import StrictModel, format_validation_error, load_yaml
from mammolab.errors import MammoLabError

__all__ = [
    "ALIASES",
    "Alias",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "SearchSpace",
    "augmentation_strength",
    "config_paths",
    "default_space_path",
    "load_space",
    "set_path",
]

@dataclass(frozen=True)
class Alias:
    """A friendly parameter name: it sets one config field, or (with ``expand``) several derived ones."""

    target: str
    doc: str
    expand: Callable[[Any], dict[str, Any]] | None = None

    def writes(self, value: Any) -> dict[str, Any]:
        """Dotted config path -> value for one suggested value."""
        return self.expand(value) if self.expand is not None else {self.target: value}


def augmentation_strength(strength: Any) -> dict[str, Any]:
    """One knob for all augmentation magnitudes: 0 = flips only, 1/3 = the train defaults, 1 = strong.

    Linear in ``strength``: rotation 30 deg x s, brightness and contrast jitter 0.3 x s, random
    resized crop keeping at least ``1 - 0.45 s`` of the area. Flip probabilities are left alone
    (they are label-preserving for mammograms at any strength).
    """
    s = float(strength)
    return {"augment.rotate": round(30.0 * s, 6), "augment.brightness": round(0.3 * s, 6),
            "augment.contrast": round(0.3 * s, 6), "augment.crop_scale": [round(1.0 - 0.45 * s, 6), 1.0]}


#: Names used in the issue and in the classic study's notebook, mapped onto :class:`TrainConfig`
#: fields. Any field of the train config can also be tuned by its own (dotted) name.
ALIASES: dict[str, Alias] = {
    "head_sizes": Alias("head_hidden", "hidden layer sizes of the MLP head, e.g. [512, 128]; [] = linear head"),
    "dropout": Alias("head_dropout", "dropout before each head layer"),
    "learning_rate": Alias("lr", "optimizer learning rate"),
    "augmentation_strength": Alias("augment", "0..1 scale of every augmentation magnitude (see "
                                   "augmentation_strength())", expand=augmentation_strength),
}

_SCALAR = (str, int, float, bool, type(None))


class FloatParam(StrictModel):
    """A real-valued parameter, sampled uniformly or (``log: true``) log-uniformly in ``[low, high]``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("use either log: true or step, not both")
        return self

    def candidates(self) -> list[Any]:
        return [self.low, self.high]


class IntParam(StrictModel):
    """An integer parameter in ``[low, high]`` (with ``step``, or log-uniform with ``log: true``)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low >= 1, got low={self.low}")
        if self.log and self.step != 1:
            raise ValueError("use either log: true or step, not both")
        return self

    def candidates(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalParam(StrictModel):
    """One of a list of choices: scalars, or lists/mappings of scalars (stored by Optuna as JSON text)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        encoded = [_encode(c) for c in self.choices]
        if len(set(map(repr, encoded))) != len(encoded):
            raise ValueError("choices must be distinct")
        return self

    def candidates(self) -> list[Any]:
        return list(self.choices)

    def encoded_choices(self) -> list[Any]:
        return [_encode(c) for c in self.choices]


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
_ADAPTER: TypeAdapter[ParamSpec] = TypeAdapter(ParamSpec)


def _encode(choice: Any) -> Any:
    """Scalars go to Optuna as they are; lists/mappings as canonical JSON text."""
    if isinstance(choice, _SCALAR):
        return choice
    try:
        return json.dumps(choice, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"choice {choice!r} is not a plain YAML value") from exc


def config_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of a config model as a dotted path, descending into nested config models."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= config_paths(ann, prefix=f"{path}.")
    return out


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping, creating the intermediate mappings."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {} if child is None else (child.model_dump() if isinstance(child, BaseModel) else dict(child))
            node[key] = child
        node = child
    node[keys[-1]] = value


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: parameter name -> distribution, and where each name lands in the config."""

    params: dict[str, FloatParam | IntParam | CategoricalParam]
    aliases: dict[str, Alias]
    source: str

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial for one value per parameter; returns decoded values keyed by space name."""
        values: dict[str, Any] = {}
        for name, spec in self.params.items():
            if isinstance(spec, FloatParam):
                values[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
            elif isinstance(spec, IntParam):
                values[name] = trial.suggest_int(name, spec.low, spec.high, log=spec.log, step=spec.step)
            else:
                values[name] = trial.suggest_categorical(name, spec.encoded_choices())
        return self.decode(values)

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Turn Optuna's stored values (JSON text for list/mapping choices) back into config values."""
        out: dict[str, Any] = {}
        for name, value in params.items():
            spec = self.params.get(name)
            if isinstance(spec, CategoricalParam) and isinstance(value, str):
                for choice, enc in zip(spec.choices, spec.encoded_choices(), strict=True):
                    if enc == value:
                        value = choice
                        break
            out[name] = value
        return out

    def overrides(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Nested train-config overrides for decoded values (aliases resolved to their fields)."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            alias = self.aliases.get(name)
            for path, v in (alias.writes(value) if alias else {name: value}).items():
                set_path(out, path, v)
        return out

    def check(self, validate: Callable[[dict[str, Any]], object]) -> None:
        """Try every bound and every choice through ``validate(overrides)`` before any trial runs.

        ``validate`` builds the train config from the overrides and raises :class:`MammoLabError` when
        it rejects them; the error is re-raised naming the space parameter and the offending value.
        """
        for name, spec in self.params.items():
            for value in spec.candidates():
                try:
                    validate(self.overrides({name: value}))
                except MammoLabError as exc:
                    raise MammoLabError(f"{self.source}: parameter {name!r} value {value!r} is not accepted "
                                        f"by the train config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The space as plain data (what a YAML file would hold), for records and hashes."""
        return {name: {"type": spec.type} | spec.model_dump(exclude_defaults=True)
                for name, spec in self.params.items()}


def default_space_path() -> Path:
    """The shipped default space (``mammolab/resources/tune_space.yaml``)."""
    return Path(str(resources.files("mammolab") / "resources" / "tune_space.yaml"))


def load_space(source: str | Path | Mapping[str, Any] | None = None, *,
               config_model: type[BaseModel] | None = None,
               aliases: Mapping[str, Alias] | None = None,
               exclude: Iterable[str] = ()) -> SearchSpace:
    """Read and validate a search space (default: the shipped one).

    ``config_model`` is the train config the values feed; with it, every key must be one of its
    fields (dotted for nested ones) or an alias, and an unknown key raises a :class:`MammoLabError`
    naming it and the nearest known names. ``exclude`` names fields the tuner sets itself (the
    model, the dataset): tuning those is refused for the same reason.
    """
    if source is None:
        source = default_space_path()
    if isinstance(source, (str, Path)):
        label = str(source)
        data: Mapping[str, Any] = load_yaml(source)
    else:
        label = "search space"
        data = source
    if not data:
        raise MammoLabError(f"{label}: the search space is empty (expected e.g. 'lr: {{type: float, low: 1e-5, "
                            f"high: 1e-2, log: true}}')")
    all_aliases = ALIASES if aliases is None else aliases
    paths = config_paths(config_model) if config_model is not None else None
    excluded = set(exclude)

    def allowed(key: str) -> bool:
        if paths is None:
            return True
        alias = all_aliases.get(key)
        target = alias.target if alias is not None and key not in paths else key
        return target in paths and target not in excluded and target.split(".")[0] not in excluded

    params: dict[str, FloatParam | IntParam | CategoricalParam] = {}
    used: dict[str, Alias] = {}
    for name, raw in data.items():
        name = str(name)
        if not allowed(name):
            import difflib

            offered = sorted(k for k in (paths or set()) | set(all_aliases) if allowed(k))
            near = difflib.get_close_matches(name, offered, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(offered)}"
            known = paths is not None and (name in paths or (name in all_aliases and all_aliases[name].target in paths))
            why = "is set by the tuner itself" if known else "is not a train-config field or alias"
            raise MammoLabError(f"{label}: unknown parameter {name!r} in the search space ({why}; {hint})")
        if not isinstance(raw, Mapping) or raw.get("type") not in ("float", "int", "categorical"):
            raise MammoLabError(f"{label}: parameter {name!r} must be a mapping with type: float, int or "
                                f"categorical (e.g. {{type: float, low: 1e-5, high: 1e-2, log: true}}), got {raw!r}")
        try:
            params[name] = _ADAPTER.validate_python(dict(raw))
        except ValidationError as exc:
            raise MammoLabError(format_validation_error(exc, f"{label}: parameter {name!r}")) from None
        if name in all_aliases and (paths is None or name not in paths):
            used[name] = all_aliases[name]
    space = SearchSpace(params=params, aliases=used, source=label)
    writers: dict[str, str] = {}
    for name, spec in params.items():
        for path in _leaf_paths(space.overrides({name: spec.candidates()[0]})):
            clash = [other for p, other in writers.items()
                     if other != name and (p == path or p.startswith(f"{path}.") or path.startswith(f"{p}."))]
            if clash:
                raise MammoLabError(f"{label}: parameters {clash[0]!r} and {name!r} both set {path!r}; keep one")
            writers[path] = name
    return space


def _leaf_paths(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out += _leaf_paths(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out
