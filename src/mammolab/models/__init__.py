"""Models: a registry of backbones (timm and MammoLab's own CNNs), heads, regimes and the classic presets.

Public API: :func:`create_model`, :func:`list_models`, :func:`list_presets`, :func:`register_model`,
:data:`CLASSIC_TEN`, :func:`load_foreign_checkpoint` (a published checkpoint in any layout
MammoLab knows, converted into a timm model). ``mammolab models`` prints the registry.

The registry finds its models here: the modules in :data:`PLUGINS` register models and presets when
imported, and this package imports them (the registry module never does: they import it). A new
model module is added to that tuple. Importing them is cheap: timm loads when a model is built.
"""

# Plug-ins first, in registration order (``mammolab models`` lists models in that order).
from mammolab.models import mammocnn, presets, timm_backbones
from mammolab.models.foreign import load_foreign_checkpoint
from mammolab.models.presets import CLASSIC_TEN
from mammolab.models.registry import (
    REGIMES,
    Backbone,
    MammoNet,
    create_model,
    get_model_entry,
    get_preset,
    list_models,
    list_presets,
    register_model,
    register_preset,
    resolve_model_name,
)

#: The modules that register models and presets (imported above, in this order).
PLUGINS = (mammocnn, timm_backbones, presets)

__all__ = [
    "CLASSIC_TEN",
    "PLUGINS",
    "REGIMES",
    "Backbone",
    "MammoNet",
    "create_model",
    "get_model_entry",
    "get_preset",
    "list_models",
    "list_presets",
    "load_foreign_checkpoint",
    "register_model",
    "register_preset",
    "resolve_model_name",
]

