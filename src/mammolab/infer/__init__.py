"""The inference core: one :class:`Predictor` for every prediction MammoLab makes.

A run (or exported) folder's recipe is applied by :mod:`mammolab.infer.apply` (numpy and OpenCV
only), its model run by one of :mod:`mammolab.infer.backends` (PyTorch, TorchScript, ONNX Runtime),
its logits turned into probabilities, averaged over test-time flips and decided at the recipe's
threshold by :mod:`mammolab.infer.core`, single-view and two-view (:mod:`mammolab.infer.breast`)
alike. ``predict``, ``serve``, ``evaluate``, ``explain`` and ``mammolab.load_run`` all go through it.
The names below load on first use, so importing the package is cheap.
"""

from mammolab._callable import lazy_getattr

_EXPORTS = {
    "Predictor": "mammolab.infer.predictor:Predictor",
    "Prepared": "mammolab.infer.apply:Prepared",
    "apply_recipe": "mammolab.infer.apply:apply_recipe",
    "class_probabilities": "mammolab.infer.core:class_probabilities",
    "decide": "mammolab.infer.core:decide",
    "load_run": "mammolab.infer.predictor:load_run",
    "positive_probability": "mammolab.infer.core:positive_probability",
    "predict_breast": "mammolab.infer.breast:predict_breast",
    "predict_breasts": "mammolab.infer.tables:predict_breasts",
    "predict_frame": "mammolab.infer.tables:predict_frame",
    "predict_split": "mammolab.infer.tables:predict_split",
    "record_threshold": "mammolab.infer.threshold:record_threshold",
    "resolve_threshold": "mammolab.infer.threshold:resolve_threshold",
    "tta_views": "mammolab.infer.core:tta_views",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
