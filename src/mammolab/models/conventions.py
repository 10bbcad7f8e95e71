"""Input conventions of published mammography encoders: the normalisation their features expect.

An encoder's features hold for the inputs it was trained on. ``--weights-convention NAME`` sets
the backbone's ``mean``/``std`` (a ``[0, 1]`` grey image is normalised as ``(x - mean) / std``);
the training transform uses them, the recipe records them and prediction applies them, and since
the name is part of the training config a run rebuilt for ``predict`` or ``evaluate`` gets them
again. Only figures read from the publishers' own code are listed, with where they come from.
"""

from __future__ import annotations

from dataclasses import dataclass

from mammolab.errors import MammoLabError

__all__ = ["CONVENTIONS", "InputConvention", "get_convention"]


@dataclass(frozen=True)
class InputConvention:
    """What an encoder's training fed it: normalisation, image size (height, width), and where that is stated."""

    name: str
    mean: float
    std: float
    image_size: tuple[int, int]
    channels: str
    source: str


CONVENTIONS: dict[str, InputConvention] = {
    "mammo-clip": InputConvention(
        name="mammo-clip", mean=0.3089279, std=0.25053555408335154, image_size=(1520, 912),
        channels="grey replicated to 3 channels (a 1-channel stem with the RGB filters summed is the same function)",
        source="batmanlab/Mammo-CLIP: src/codebase/configs/pre_train_b2_clip.yaml and pre_train_b5_clip.yaml "
               "(base.mean, base.std, image_size_h, image_size_w); "
               "src/codebase/breastclip/data/datasets/imagetext.py (PNG read as RGB, scaled to [0, 1] by its "
               "min and max, then (x - mean) / std)"),
}


def get_convention(name: str) -> InputConvention:
    """The convention called ``name``; an unknown name raises with the known ones."""
    if name not in CONVENTIONS:
        raise MammoLabError(f"--weights-convention: unknown convention {name!r}",
                            hint=f"known: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]
