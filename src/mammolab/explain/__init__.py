"""Explain stage: Grad-CAM, Grad-CAM++ and occlusion heatmaps with localisation scores.

``mammolab.explain(run)`` explains a run's test split (the package is callable, see
:func:`mammolab.api.explain`); the names below load on first use, so importing the package is cheap.
"""

from mammolab._callable import lazy_getattr, make_callable

_EXPORTS = {
    "METHODS": "mammolab.explain.cam:METHODS",
    "compute_heatmaps": "mammolab.explain.cam:compute_heatmaps",
    "energy_in_boxes": "mammolab.explain.localisation:energy_in_boxes",
    "explain_run": "mammolab.explain.runner:explain_run",
    "heatmaps_for_arrays": "mammolab.explain.runner:heatmaps_for_arrays",
    "overlay_panel": "mammolab.explain.overlay:overlay_panel",
    "pointing_hit": "mammolab.explain.localisation:pointing_hit",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
make_callable(__name__, "mammolab.api:explain")
