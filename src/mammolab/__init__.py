"""MammoLab: from a raw mammography download to trained, compared and explained classifiers.

Every pipeline stage lives in its own subpackage (``data``, ``preprocess``, ``models``, ``train``,
``evaluate``, ``explain``, ``tune``, ``app``) and is callable from Python; the ``mammolab`` CLI is a
thin layer on top.
"""

from mammolab.errors import MammoLabError

__version__ = "0.1.0"

__all__ = ["MammoLabError", "__version__"]
