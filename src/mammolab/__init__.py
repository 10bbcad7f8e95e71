"""MammoLab: from a raw mammography download to trained, compared and explained classifiers.

Every pipeline stage lives in its own subpackage (``data``, ``preprocess``, ``models``, ``train``,
``evaluate``, ``explain``, ``tune``, ``app``) and is callable from Python; the ``mammolab`` CLI is a
thin layer on top. The stage functions are here too, loaded on first use so ``import mammolab``
stays fast::

    from mammolab import organize, preprocess, train, evaluate, explain, predict, compare, load_run

``train``, ``evaluate``, ``explain`` and ``preprocess`` are the subpackages of the same name, made
callable (``mammolab.train(dataset, out=..., model=...)``); see :mod:`mammolab.api` for each
function and its typed result.
"""

from __future__ import annotations

import importlib
from typing import Any

from mammolab.errors import MammoLabError

__version__ = "0.1.0"

#: The Python API: name -> ``module:attribute`` (the subpackages among them are callable).
_API = {
    "organize": "mammolab.data.organize:organize",
    "preprocess": "mammolab.preprocess",
    "train": "mammolab.train",
    "evaluate": "mammolab.evaluate",
    "explain": "mammolab.explain",
    "predict": "mammolab.evaluate.predict:predict_files",
    "compare": "mammolab.api:compare",
    "load_run": "mammolab.infer.predictor:load_run",
}

__all__ = ["MammoLabError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'mammolab' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
        globals()[name] = value  # a subpackage is set here by the import system itself
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
