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
    "load_yaml",
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
        raise MammoLabError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MammoLabError(f"{path}: expected a mapping of option: value at the top level")
    return data


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
