"""Preprocessing stage: border crop, annotation removal, orientation, denoise, CLAHE, resize in one pass.

``ops`` holds the steps (pure callables on a :class:`~mammolab.preprocess.ops.Sample`), ``pipeline``
composes them from a config and runs them over a dataset's manifest, ``augment`` writes the classic
offline augmentation. Heavy work lives in the submodules; importing this package is cheap.
"""

from mammolab._callable import make_callable
from mammolab.preprocess.ops import OPS, Sample
from mammolab.preprocess.pipeline import Pipeline, PreprocessConfig, load_preprocess_config, preprocess

__all__ = ["OPS", "Pipeline", "PreprocessConfig", "Sample", "load_preprocess_config", "preprocess"]

# ``from mammolab import preprocess`` gives this package; calling it preprocesses (mammolab._callable).
make_callable(__name__, "mammolab.preprocess.pipeline:preprocess")
