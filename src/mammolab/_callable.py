"""Subpackages that are also the stage's function: ``mammolab.train(...)`` trains, ``mammolab.train.fit`` imports.

``from mammolab import train`` must give the training function (the Python API), yet ``mammolab.train``
is the training subpackage, and Python's import system sets the parent's attribute to the subpackage
as soon as any of its modules is imported. Instead of a name that changes meaning depending on what
was imported first, the subpackage itself is made callable: calling it calls the function, and
``inspect.signature``/``help`` show the function's signature and docstring.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_getattr", "make_callable", "resolve"]


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:attr"`` -> the object."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class CallablePackage(types.ModuleType):
    """A package module whose call runs the function named by ``__api_target__``."""

    __api_target__: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return resolve(self.__api_target__)(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(resolve(self.__api_target__))


def make_callable(name: str, target: str) -> None:
    """Make the already imported module ``name`` callable as ``target`` (``"module:function"``)."""
    module = sys.modules[name]
    module.__class__ = type("CallablePackage", (CallablePackage,), {"__api_target__": target})


def lazy_getattr(name: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[attr]`` (``"module:attr"``) on first use and caches it."""

    def __getattr__(attr: str) -> Any:
        if attr not in exports:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        value = resolve(exports[attr])
        setattr(sys.modules[name], attr, value)
        return value

    return __getattr__
