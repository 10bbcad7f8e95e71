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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one clear error for a missing file or a non-mapping document."""
    path = Path(path)
    if not path.is_file():
        raise MammoLabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
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
