"""The heatmap methods, as a constant of their own: ``serve`` and the CLI's help check ``--method``
against it without importing :mod:`mammolab.explain.cam` (torch), so the light runtime
(``mammolab-runtime``, no torch) can validate its options."""

from __future__ import annotations

__all__ = ["METHODS"]

METHODS = ("gradcam", "gradcam++", "occlusion")
