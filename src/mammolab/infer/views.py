"""Which models score breasts (two-view CC + MLO) rather than single images, told without loading them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammolab.config import load_yaml
from mammolab.errors import MammoLabError
from mammolab.io.atomic import read_json
from mammolab.recipe import RECIPE_NAME

__all__ = ["VIEW_CHOICES", "is_two_view", "parse_views", "refuse_two_view", "run_views"]

#: What ``--file-views`` of ``predict`` accepts: the views of each breast's files, in order.
VIEW_CHOICES = ("cc+mlo", "cc", "mlo")


def run_views(path: str | Path) -> str:
    """``views`` of a run folder's ``config.yaml``, or of an exported folder's ``recipe.json``
    (``single`` for a single-view model or an older run), read without loading the model, so a
    command can tell a breast model before any work."""
    cfg = Path(path) / "config.yaml"
    if not cfg.is_file():
        recipe = read_json(Path(path) / RECIPE_NAME)  # an exported folder: written by mammolab export
        return str(recipe.get("views") or "single") if isinstance(recipe, dict) else "single"
    data = load_yaml(cfg) or {}
    return str(data.get("views") or "single") if isinstance(data, dict) else "single"


def is_two_view(predictor_or_path: Any) -> bool:
    """Whether a :class:`~mammolab.infer.predictor.Predictor` (or a run or exported folder) holds a breast model."""
    if isinstance(predictor_or_path, (str, Path)):
        return run_views(predictor_or_path) != "single"
    if getattr(getattr(predictor_or_path, "recipe", None), "views", None):  # an exported breast model
        return True
    return str(getattr(getattr(predictor_or_path, "config", None), "views", "single")) != "single"


def refuse_two_view(predictor_or_path: Any, command: str, reason: str, alternative: str) -> None:
    """One-line :class:`MammoLabError` when ``command`` (which works on single images: ``reason`` says
    how) is given a two-view breast model."""
    if is_two_view(predictor_or_path):
        where = getattr(predictor_or_path, "path", predictor_or_path)
        raise MammoLabError(f"{command}: {where} is a two-view (CC + MLO) breast model; {reason}", hint=alternative)


def parse_views(views: str) -> tuple[str, ...]:
    """``cc+mlo`` -> ``("CC", "MLO")``; ``cc`` / ``mlo`` for a breast filmed in one view only."""
    key = str(views).strip().lower().replace(" ", "")
    if key not in VIEW_CHOICES:
        raise MammoLabError(f"--file-views: expected one of {', '.join(VIEW_CHOICES)} (the views of each breast's "
                            f"files, in order), got {views!r}")
    return tuple(v.upper() for v in key.split("+"))
