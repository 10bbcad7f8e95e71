"""The classic study's ten configurations, by name.

Each preset is (backbone, regime, option overrides). Overrides are defaults for
:class:`mammolab.train.config.TrainConfig`: a YAML file or a command-line option still wins. The
``mammocnn`` preset shares its model's name: asking for ``mammocnn`` is asking for the classic CNN.
"""

from __future__ import annotations

from mammolab.models.registry import register_preset

__all__ = ["CLASSIC_TEN"]

for _arch, _label in (("resnet18", "ResNet-18"), ("densenet121", "DenseNet-121")):
    register_preset(f"{_arch}_opw", _arch, "opw", f"{_label}, frozen ImageNet backbone + linear head")
    register_preset(f"{_arch}_pft", _arch, "pft", f"{_label}, last two stages + head fine-tuned")
    register_preset(f"{_arch}_cft", _arch, "cft", f"{_label}, complete fine-tuning")

register_preset("efficientnet_b3_opw", "efficientnet_b3", "opw", "EfficientNet-B3, frozen backbone + linear head")
register_preset("efficientnet_b3_cft", "efficientnet_b3", "cft", "EfficientNet-B3, complete fine-tuning")
register_preset(
    "efficientnet_b3_optuna", "efficientnet_b3", "pft",
    "EfficientNet-B3 as tuned by Optuna: MLP head 768-128-32 (ELU, dropout 0.36), AdamW lr 5.6e-4, "
    "first 70% of layers frozen",
    head_hidden=[768, 128, 32], head_activation="elu", head_dropout=0.36, optimizer="adamw", lr=5.6e-4,
    freeze_proportion=0.70,
)
register_preset("mammocnn", "mammocnn", "cft", "the classic study's CNN trained from scratch at 512 px",
                image_size=512)

#: The ten configurations of the classic study, in its order.
CLASSIC_TEN: tuple[str, ...] = (
    "resnet18_opw", "resnet18_pft", "resnet18_cft", "densenet121_opw", "densenet121_pft", "densenet121_cft",
    "efficientnet_b3_opw", "efficientnet_b3_cft", "efficientnet_b3_optuna", "mammocnn",
)
