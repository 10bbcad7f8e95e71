"""Which class a heatmap explains, and which layer Grad-CAM reads: the fixes behind blank benign maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mammolab.errors import MammoLabError
from mammolab.explain.cam import compute_heatmaps, find_target_layer, predicted_targets, target_probabilities
from mammolab.explain.localisation import pointing_hit, summarise_localisation
from mammolab.explain.runner import resolve_targets

SIZE = 64
CLASSES = ("benign", "malignant")


class BrightDarkNet(nn.Module):
    """Single-logit net: a bright spot is evidence for malignant, a dark spot evidence for benign.

    Channel 0 fires on pixels brighter than ~0.6, channel 1 on pixels darker than ~0.1; the logit
    is ``+w * mean(ch0) - w * mean(ch1)``. An image with one of each has its malignant evidence
    at the bright spot and its benign evidence at the dark spot, so each class has its own place.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0].fill_(1 / 9)
            self.features[0].weight[1].fill_(-1 / 9)
            self.features[0].bias.copy_(torch.tensor([-0.6, 0.1]))
            self.fc.weight.copy_(torch.tensor([[400.0, -400.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _spot(img: np.ndarray, cy: int, cx: int, value: float) -> None:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = value


def bright_and_dark(bright_r: float = 1.0) -> tuple[torch.Tensor, list[float], list[float]]:
    """One image: grey background, bright spot top-left, dark spot bottom-right; and the two boxes."""
    img = np.full((SIZE, SIZE), 0.35, dtype=np.float32)
    _spot(img, 14, 14, bright_r)
    _spot(img, 48, 48, 0.0)
    return torch.from_numpy(img)[None, None], [8.0, 8.0, 21.0, 21.0], [42.0, 42.0, 55.0, 55.0]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion"])
def test_single_logit_benign_target_points_at_benign_evidence(method: str) -> None:
    net = BrightDarkNet().eval()
    x, bright_box, dark_box = bright_and_dark()
    malignant = compute_heatmaps(net, x, method, [1])[0]
    benign = compute_heatmaps(net, x, method, [0])[0]
    # Each class's map is non-blank and peaks on its own evidence; before the fix the benign
    # target of a one-logit model was the malignant logit again.
    assert malignant.max() > 0 and benign.max() > 0
    assert pointing_hit(malignant, [bright_box]) is True
    assert pointing_hit(benign, [dark_box]) is True
    assert not np.allclose(malignant, benign)


def test_default_target_is_the_predicted_class() -> None:
    net = BrightDarkNet().eval()
    x, _, dark_box = bright_and_dark(bright_r=0.62)  # barely bright: the dark spot wins, benign predicted
    probs = target_probabilities(net, x)
    assert probs[0, 1] < 0.5 and predicted_targets(probs) == [0]
    heat = compute_heatmaps(net, x, "gradcam")[0]
    assert heat.max() > 0 and pointing_hit(heat, [dark_box]) is True


def test_resolve_targets() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert resolve_targets("predicted", CLASSES, probs) == [0, 1, 0]
    assert resolve_targets("malignant", CLASSES, probs) == [1, 1, 1]
    assert resolve_targets("benign", CLASSES, probs) == [0, 0, 0]
    # ``true`` uses the label; a file with no label falls back to its prediction.
    assert resolve_targets("true", CLASSES, probs, ["malignant", "", "malignant"]) == [1, 1, 1]
    assert resolve_targets("true", CLASSES, probs, ["benign", "benign", ""]) == [0, 0, 0]
    # ``predicted`` decides at the run's operating point, as the printed class does (0.35 here: 0.4 is malignant).
    assert resolve_targets("predicted", CLASSES, probs, threshold=0.35) == [0, 1, 1]
    assert resolve_targets("true", CLASSES, probs, ["", "", ""], threshold=0.75) == [0, 0, 0]
    four = np.array([[0.1, 0.2, 0.6, 0.1]])
    assert resolve_targets("predicted", ("a", "b", "c", "d"), four) == [2]
    with pytest.raises(MammoLabError, match="--target: expected predicted, true or a class of the run"):
        resolve_targets("cancer", CLASSES, probs)
    with pytest.raises(MammoLabError, match="--target true: label"):
        resolve_targets("true", CLASSES, probs, ["benign", "normal", "benign"])


def test_layer_choice_keeps_enough_cells() -> None:
    registry = pytest.importorskip("mammolab.models.registry")
    torch.manual_seed(0)
    model = registry.create_model("resnet18", in_chans=1, num_outputs=1).eval()
    # At 64 px, layer4 is 2x2: too coarse to point anywhere but a quadrant, so layer3 (4x4) is used.
    name, _ = find_target_layer(model, torch.rand(1, 1, 64, 64))
    assert name.endswith("layer3")
    # At 256 px, layer4 is 8x8 and stays the choice.
    name, _ = find_target_layer(model, torch.rand(1, 1, 256, 256))
    assert name.endswith("layer4")
    # A named layer wins, with or without the backbone prefix; a wrong name gets a suggestion.
    full = next(n for n, _ in model.named_modules() if n.endswith("layer4"))
    assert find_target_layer(model, torch.rand(1, 1, 64, 64), full)[0] == full
    with pytest.raises(MammoLabError, match=r"--layer: .*no module named 'layer5'.*did you mean"):
        find_target_layer(model, torch.rand(1, 1, 64, 64), "layer5")
    heat = compute_heatmaps(model, torch.rand(2, 1, 64, 64), "gradcam", [0, 1], layer=full)
    assert heat.shape == (2, 64, 64)


def test_summary_counts_blank_maps_and_compares_like_with_like() -> None:
    records = [
        {"has_box": True, "energy_in_box": 0.6, "box_area_fraction": 0.2, "pointing_hit": True, "blank": False},
        {"has_box": True, "energy_in_box": None, "box_area_fraction": 0.5, "pointing_hit": None, "blank": True},
    ]
    s = summarise_localisation(records)
    assert s["n_blank"] == 1 and s["n_with_box"] == 2
    # The area baseline is averaged over the images the energy share was scored on.
    assert s["energy_in_box_mean"] == pytest.approx(0.6) and s["box_area_fraction_mean"] == pytest.approx(0.2)
