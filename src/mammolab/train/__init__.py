"""Train stage: one Lightning engine for every registry model, regime and preset.

``mammolab.train(dataset, out=..., model=...)`` trains (the package is callable, see
:func:`mammolab.api.train`); the names below load on first use, so importing the package is cheap.
"""

from mammolab._callable import lazy_getattr, make_callable

_EXPORTS = {
    "AugmentConfig": "mammolab.train.config:AugmentConfig",
    "RunResult": "mammolab.train.fit:RunResult",
    "TrainConfig": "mammolab.train.config:TrainConfig",
    "RunModel": "mammolab.train.inference:RunModel",
    "load_run_model": "mammolab.train.inference:load_run_model",
    "plot_curves": "mammolab.train.fit:plot_curves",
    "read_metrics": "mammolab.train.fit:read_metrics",
    "resolve_train_config": "mammolab.train.config:resolve_train_config",
    "train": "mammolab.train.fit:train",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
make_callable(__name__, "mammolab.api:train")
