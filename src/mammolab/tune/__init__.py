"""Hyperparameter search with Optuna: a YAML search space, SQLite or PostgreSQL studies, pruning, presets.

``tune(dataset, model, n_trials, out)`` runs, resumes or joins a study (see :mod:`mammolab.tune.runner`);
:mod:`~mammolab.tune.space` reads the search space, :mod:`~mammolab.tune.storage` opens the study
database, :mod:`~mammolab.tune.search` runs exactly N trials across workers and writes the reports.
"""

from mammolab.tune.runner import TuneResult, export_preset, tune
from mammolab.tune.space import SearchSpace, load_space

__all__ = ["SearchSpace", "TuneResult", "export_preset", "load_space", "tune"]
