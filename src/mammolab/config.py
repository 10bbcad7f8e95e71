"""Typed configuration: YAML in, validated models out, and a stable hash for resume decisions.

Stage configs are pydantic models that forbid unknown keys, so a typo in a YAML file is an error
that names the key instead of a silently ignored setting. The hash of a resolved config is what a
stage writes beside its output (``mammolab.json``); a re-run with the same hash skips finished
work, a changed hash redoes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mammolab.errors import MammoLabError

__all__ = [
    "StrictModel",
    "UniqueKeyLoader",
    "check_set_types",
    "config_hash",
    "deep_merge",
    "load_yaml",
    "yaml_error_line",
    "load_config",
    "dump_yaml",
    "format_validation_error",
]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _canonical(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return _canonical(obj.model_dump(mode="json"))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(obj: Any, length: int = 16) -> str:
    """Return a short, stable hash of a config (model or plain data), independent of key order."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice; carries both 1-based lines."""

    def __init__(self, key: Any, first: int, second: int, mark: Any) -> None:
        super().__init__(None, None, f"key {key!r} appears twice", mark)
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping naming one key twice is an error.

    Plain ``yaml.safe_load`` keeps the last value silently, so ``epochs: 1`` then, fifty lines
    down, ``epochs: 50`` trains 50 epochs with nothing said; YAML 1.2 itself says keys are unique.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # merge keys (<<: *base) may be overridden on purpose: not duplicates
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if first is not None:
                raise DuplicateKeyError(key, first, key_node.start_mark.line + 1, key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one clear error for a missing file, a non-mapping document or a key
    given twice (the file, the key and both lines: the silent last-one-wins of PyYAML trains the
    wrong number of epochs without a word)."""
    path = Path(path)
    if not path.is_file():
        raise MammoLabError(f"config file not found: {path}")
    try:
        data = safe_load_unique(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as exc:
        raise MammoLabError(f"{path}: key {exc.key!r} is given twice (lines {exc.first} and {exc.second}); "
                            "expected each option once: delete the line you do not mean") from None
    except yaml.YAMLError as exc:
        raise MammoLabError(yaml_error_line(path, exc)) from None
    except UnicodeDecodeError as exc:
        raise MammoLabError(f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML file saved as UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MammoLabError(f"{path}: expected a mapping of option: value at the top level")
    return data


def yaml_error_line(path: str | Path, exc: yaml.YAMLError) -> str:
    """PyYAML's several-line report as one line: ``FILE:LINE:COLUMN: problem (context)``, 1-based."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = " ".join(str(getattr(exc, "context", None) or "").split())
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {detail}; expected 'option: value' lines (indent nested ones with spaces)"


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's multi-line report into one line that names each offending key."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def load_config(model: type[M], data: dict[str, Any] | str | Path | None = None, *,
                overrides: dict[str, Any] | None = None, source: str | None = None) -> M:
    """Build a validated config from a YAML path or mapping plus CLI overrides (``None`` = unset)."""
    if isinstance(data, (str, Path)):
        source = source or str(data)
        data = load_yaml(data)
    merged: dict[str, Any] = dict(data or {})
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise MammoLabError(format_validation_error(exc, source or model.__name__)) from None


def _flatten(sets: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in sets.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, (*prefix, str(key))))
        else:
            out[(*prefix, str(key))] = value
    return out


def _type_text(model: type[BaseModel], key: tuple[str, ...]) -> str:
    """The annotation of the field at ``key`` as a person reads it (``int``, ``float | None``...)."""
    import typing

    ann: Any = model
    for part in key:
        fields = getattr(ann, "model_fields", None)
        if not fields or part not in fields:
            return "another type"
        ann = fields[part].annotation
    if isinstance(ann, type):
        return ann.__name__
    if typing.get_origin(ann) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    return str(ann).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")


def check_set_types(model: type[BaseModel], data: dict[str, Any], sets: dict[str, Any], *,
                    option: str = "--set", prefix: tuple[str, ...] = ()) -> None:
    """Refuse a ``--set`` value whose YAML type is not its field's type, judged strictly.

    ``data`` is the config the values go into (``sets`` is merged over it here), ``sets`` the nested
    ``--set`` values, ``prefix`` where ``model`` sits in the dotted keys of the message.
    Lax mode reads ``--set epochs=true`` as 1 epoch; here the merged config is validated again in
    pydantic's strict JSON mode (what a JSON document may hold: a list for a tuple, a string for a
    path, an int for a float; never a bool for a number) and an error at a key that ``--set`` gave
    is one line naming the key, the value and the type expected. Values from the file keep the lax
    rules they always had.
    """
    flat = _flatten(sets)
    if not flat:
        return
    try:
        model.model_validate_json(json.dumps(_canonical(deep_merge(data, sets)), default=str), strict=True)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            for key, value in flat.items():
                full = (*prefix, *key)
                if key and loc[:len(key)] == key and err["type"] not in ("missing", "extra_forbidden"):
                    shown = "true" if value is True else "false" if value is False else value
                    why = " (true/false is a yes/no, not a number)" if isinstance(value, bool) else ""
                    name = ".".join(full)
                    raise MammoLabError(f"{option} {name}={shown}: expected {_type_text(model, key)} for {name}, "
                                        f"got a {type(value).__name__}{why}") from None


def dump_yaml(obj: Any) -> str:
    """Serialise a config (model or mapping) to YAML text in a stable key order."""
    return yaml.safe_dump(_canonical(obj), sort_keys=False)


def deep_merge(base: Any, extra: Any) -> dict[str, Any]:
    """``base`` with ``extra`` merged in section by section (``extra`` wins); the inputs are not modified.

    How ``--set augment.hflip=0`` changes one augmentation option and keeps the others of the file.
    """
    import copy
    from collections.abc import Mapping

    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
