"""Evaluate stage: metrics with patient-bootstrap intervals, figures, prediction and the comparison report.

``mammolab.evaluate(run)`` scores a run (the package is callable, see :func:`mammolab.api.evaluate`);
the names below load on first use, so importing the package is cheap.
"""

from mammolab._callable import lazy_getattr, make_callable

_EXPORTS = {
    "Predictor": "mammolab.infer.predictor:Predictor",
    "RunSummary": "mammolab.evaluate.report_sections:RunSummary",
    "auc_score": "mammolab.evaluate.metrics:auc_score",
    "binary_metrics": "mammolab.evaluate.metrics:binary_metrics",
    "bootstrap_auc_ci": "mammolab.evaluate.metrics:bootstrap_auc_ci",
    "compare_runs": "mammolab.evaluate.report:compare_runs",
    "delong_test": "mammolab.evaluate.metrics:delong_test",
    "eval_dir": "mammolab.evaluate.evaluation:eval_dir",
    "evaluate_predictions": "mammolab.evaluate.metrics:evaluate_predictions",
    "evaluate_run": "mammolab.evaluate.evaluation:evaluate_run",
    "fixed_rate_operating_points": "mammolab.evaluate.metrics:fixed_rate_operating_points",
    "load_evaluation": "mammolab.evaluate.evaluation:load_evaluation",
    "predict_files": "mammolab.evaluate.predict:predict_files",
    "write_evaluation": "mammolab.evaluate.evaluation:write_evaluation",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
make_callable(__name__, "mammolab.api:evaluate")
