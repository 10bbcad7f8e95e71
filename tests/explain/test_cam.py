"""Heatmaps: shape and range, hottest region inside the lesion box, registry models, overlay colours."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from mammolab.errors import MammoLabError
from mammolab.explain.cam import METHODS, compute_heatmaps, find_target_layer, target_probabilities
from mammolab.explain.localisation import box_mask, energy_in_boxes, pointing_hit, summarise_localisation
from mammolab.explain.overlay import colorize, overlay_panel, write_rgb_png

SIZE = 64


def lesion_batch(centres: list[tuple[int, int]], seed: int = 0) -> tuple[torch.Tensor, list[list[float]]]:
    """Noisy grey 1-channel images, each with one bright Gaussian lesion; returns images and boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    imgs, boxes = [], []
    for cy, cx in centres:
        img = rng.normal(0.3, 0.04, (SIZE, SIZE)) + 0.7 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.5**2))
        imgs.append(img)
        boxes.append([cx - 8.0, cy - 8.0, cx + 8.0, cy + 8.0])
    return torch.from_numpy(np.stack(imgs)[:, None].astype(np.float32)), boxes


class BrightSpotNet(nn.Module):
    """A hand-built 1-channel CNN that scores 'malignant' by how much bright tissue it sees.

    conv(3x3 mean, bias -0.6) -> ReLU -> conv(1x1) -> ReLU -> global average -> linear: only pixels
    brighter than ~0.6 (the lesion) activate, so the evidence sits in the lesion by construction.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 1)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 9)
            self.features[0].bias.fill_(-0.6)
            self.features[2].weight.copy_(torch.eye(4)[:, :, None, None])
            self.features[2].bias.zero_()
            self.fc.weight.fill_(600.0)
            self.fc.bias.fill_(-2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def lesions() -> tuple[torch.Tensor, list[list[float]]]:
    return lesion_batch([(14, 16), (48, 40), (30, 52), (50, 12)])


@pytest.mark.parametrize("method", METHODS)
def test_hottest_region_inside_lesion_box(method: str, lesions) -> None:
    x, boxes = lesions
    net = BrightSpotNet().eval()
    assert (target_probabilities(net, x)[:, 1] > 0.5).all()  # the net does see every lesion
    heat = compute_heatmaps(net, x, method, grid=8)
    assert heat.shape == (4, SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and np.allclose(heat.max(axis=(1, 2)), 1.0, atol=1e-3)
    for h, box in zip(heat, boxes, strict=True):
        assert pointing_hit(h, [box]) is True
        # Most of the map's mass is on the lesion, far above the box's 6% share of the image.
        assert energy_in_boxes(h, [box]) > 0.5


def test_target_layer_is_last_feature_map() -> None:
    name, layer = find_target_layer(BrightSpotNet(), torch.zeros(1, 1, SIZE, SIZE))
    assert name == "features" and isinstance(layer, nn.Sequential)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1))
    with pytest.raises(MammoLabError, match="occlusion"):
        find_target_layer(flat, torch.zeros(1, 1, SIZE, SIZE))
    # Occlusion needs no feature map at all.
    assert compute_heatmaps(flat, torch.rand(2, 1, SIZE, SIZE), "occlusion", grid=4).shape == (2, SIZE, SIZE)


def test_bad_method_and_shape(lesions) -> None:
    x, _ = lesions
    with pytest.raises(MammoLabError, match="--method"):
        compute_heatmaps(BrightSpotNet(), x, "lime")
    with pytest.raises(MammoLabError, match=r"\[B, C, H, W\]"):
        compute_heatmaps(BrightSpotNet(), x[0], "gradcam")


@pytest.mark.parametrize("name", ["mammocnn", "resnet18"])
def test_registry_models_one_channel(name: str) -> None:
    registry = pytest.importorskip("mammolab.models.registry")
    torch.manual_seed(0)
    model = registry.create_model(name, regime="opw", in_chans=1, num_outputs=1).eval()  # frozen backbone
    x = torch.rand(2, 1, SIZE, SIZE)
    layer_name, _ = find_target_layer(model, x[:1])
    assert layer_name  # a named module inside the backbone
    for method in ("gradcam", "gradcam++"):
        heat = compute_heatmaps(model, x, method)
        assert heat.shape == (2, SIZE, SIZE) and heat.min() >= 0.0 and heat.max() <= 1.0
    four = registry.create_model(name, in_chans=1, num_outputs=4).eval()
    heat = compute_heatmaps(four, x, "occlusion", grid=4)
    assert heat.shape == (2, SIZE, SIZE) and heat.min() >= 0.0 and heat.max() <= 1.0


def test_localisation_scores() -> None:
    heat = np.zeros((20, 30), dtype=np.float32)
    heat[5:10, 10:20] = 1.0
    heat[0, 0] = 0.5
    assert box_mask((20, 30), [[10, 5, 20, 10]]).sum() == 50
    assert energy_in_boxes(heat, [[10, 5, 20, 10]]) == pytest.approx(50 / 50.5)
    assert pointing_hit(heat, [[10, 5, 20, 10]]) is True
    assert pointing_hit(heat, [[0, 12, 5, 20]]) is False
    assert pointing_hit(heat, [[0, 12, 5, 20]], tolerance=8) is True  # grown box reaches the maximum
    assert energy_in_boxes(heat, []) is None and pointing_hit(heat, []) is None
    s = summarise_localisation([
        {"energy_in_box": 0.8, "pointing_hit": True, "has_box": True, "box_area_fraction": 0.1},
        {"energy_in_box": 0.4, "pointing_hit": False, "has_box": True, "box_area_fraction": 0.1},
        {"energy_in_box": None, "pointing_hit": None, "has_box": False, "box_area_fraction": None},
    ])
    assert s["energy_in_box_mean"] == pytest.approx(0.6) and s["pointing_game_hit_rate"] == 0.5
    assert s["n_with_box"] == 2 and s["n_images"] == 3


def test_overlay_colours_and_box(tmp_path: Path) -> None:
    assert tuple(colorize(np.array([[1.0]]))[0, 0]) == pytest.approx((128, 0, 0), abs=10)  # hot = red in RGB
    assert colorize(np.array([[0.0]]))[0, 0, 2] > 100  # cold = blue
    img = np.full((64, 64), 100, dtype=np.uint8)
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[20:30, 40:50] = 1.0
    panel = overlay_panel(img, heat, [[10, 10, 30, 30]], caption="p=0.9")
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[1] > 2 * 256
    path = write_rgb_png(tmp_path / "o.png", panel)
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    strip = rgb.shape[0] - 256  # caption height; the panels are enlarged 4x to 256 px
    right = rgb[strip:, 256 + 5:]  # after the plain image and a 5 px gap (a colour bar follows on the right)
    hot = right[25 * 4, 45 * 4].astype(int)
    cold = right[5 * 4, 5 * 4].astype(int)
    assert hot[0] > hot[1] + 40 and hot[0] > hot[2] + 40  # red where the heat is, as stored in the PNG ...
    assert cold[2] > cold[0] + 40  # ... and blue where there is none
    box_px = rgb[strip + 10 * 4, 20 * 4]  # top edge of the box on the plain image
    assert tuple(box_px) == (0, 255, 0)
    with pytest.raises(MammoLabError, match="does not match"):
        overlay_panel(img, heat[:10], [])
