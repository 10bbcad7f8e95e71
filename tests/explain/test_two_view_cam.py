"""Per-view heatmaps of a two-view breast model: Grad-CAM equals a hand-computed one on the full model,
occlusion follows the lesion of the occluded view, a missing view gets no map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammolab.errors import MammoLabError
from mammolab.explain.breast import breast_heatmaps, breast_probabilities
from mammolab.explain.cam import find_target_layer


def _breast_model(fusion: str) -> torch.nn.Module:
    from mammolab.train.config import resolve_train_config
    from mammolab.train.fit import build_model

    torch.manual_seed(0)
    cfg = resolve_train_config(overrides={"model": "mammoresnet", "views": "cc+mlo", "fusion": fusion,
                                          "image_size": 32, "weights": "none", "accelerator": "cpu"})
    return build_model(cfg, 1, weights="none").eval()


def _hand_gradcam(model: torch.nn.Module, x: torch.Tensor, present: torch.Tensor) -> list[np.ndarray]:
    """Grad-CAM of the breast's malignant logit on the FULL model: one backward pass, maps of both views."""
    import cv2

    # The layer choice is the single-image rule's (last map with >= 4 cells), found on the backbone alone.
    _, layer = find_target_layer(model.backbone, x[:, 0])
    store: dict[str, torch.Tensor] = {}

    def hook(_m: object, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        store["a"] = out

    handle = layer.register_forward_hook(hook)
    try:
        x = x.clone().requires_grad_(True)
        model(x, present)[0, 0].backward()
    finally:
        handle.remove()
    a = store["a"]  # [2, C, h, w]: CC then MLO, the backbone ran on both views of the breast
    weights = a.grad.mean(dim=(2, 3))
    maps = []
    for v in range(2):
        cam = torch.relu((weights[v][:, None, None] * a[v]).sum(0)).detach().numpy()
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        cam = cv2.resize(cam.astype(np.float32), (x.shape[-1], x.shape[-2]))
        # pytorch-grad-cam rescales once more after the resize (aggregating its target layers)
        cam = cam - cam.min()
        maps.append(cam / (1e-7 + cam.max()))
    return maps


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_per_view_gradcam_equals_the_full_models_gradients(fusion: str) -> None:
    model = _breast_model(fusion)
    torch.manual_seed(1)
    x = torch.randn(1, 2, 1, 32, 48)
    present = torch.tensor([[True, True]])
    ours = breast_heatmaps(model, x, present, "gradcam", [1])[0]
    hand = _hand_gradcam(model, x, present)
    for v in range(2):
        assert ours[v] is not None and ours[v].shape == (32, 48)
        assert float(hand[v].max()) > 0
        np.testing.assert_allclose(ours[v], np.clip(hand[v], 0, 1), atol=1e-4)
    assert not np.allclose(ours[0], ours[1])  # two views, two different maps


def test_missing_view_gets_no_map_and_occlusion_follows_the_view() -> None:
    model = _breast_model("concat")
    torch.manual_seed(2)
    x = torch.randn(2, 2, 1, 32, 32)
    present = torch.tensor([[True, False], [True, True]])
    maps = breast_heatmaps(model, x, present, "occlusion", [1, 1], grid=4)
    assert maps[0][1] is None and maps[0][0] is not None and maps[0][0].shape == (32, 32)
    assert all(m is not None and m.shape == (32, 32) for m in maps[1])
    # Changing the MLO image of breast 1 changes its MLO map, and its CC map too (the held view moved).
    x2 = x.clone()
    x2[1, 1] = torch.randn(1, 32, 32)
    again = breast_heatmaps(model, x2, present, "occlusion", [1, 1], grid=4)
    np.testing.assert_array_equal(again[0][0], maps[0][0])  # breast 0 untouched
    assert not np.allclose(again[1][1], maps[1][1])
    # The missing view's filler does not matter: any image in the absent slot gives the same map.
    x3 = x.clone()
    x3[0, 1] = 0
    np.testing.assert_allclose(breast_heatmaps(model, x3, present, "occlusion", [1, 1], grid=4)[0][0], maps[0][0],
                               atol=1e-6)


def test_occlusion_of_a_callable_matches_the_module_and_errors() -> None:
    model = _breast_model("attention")
    torch.manual_seed(3)
    x = torch.randn(1, 2, 1, 32, 32)
    present = torch.tensor([[True, True]])
    via_module = breast_heatmaps(model, x, present, "occlusion", [1], grid=4)[0]
    via_fn = breast_heatmaps(lambda a, p: model(a, p), x, present, "occlusion", [1], grid=4)[0]
    for a, b in zip(via_module, via_fn, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    probs = breast_probabilities(model, x, present)
    assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1) < 1e-6
    with pytest.raises(MammoLabError, match="exported breast model has no layers to hook"):
        breast_heatmaps(lambda a, p: model(a, p), x, present, "gradcam", [1])
    with pytest.raises(MammoLabError, match="present is all false"):
        breast_heatmaps(model, x, torch.tensor([[False, False]]), "occlusion", [1])
    with pytest.raises(MammoLabError, match="expected breasts x"):
        breast_heatmaps(model, x[:, 0], present, "occlusion", [1])
    with pytest.raises(MammoLabError, match="--method: expected one of"):
        breast_heatmaps(model, x, present, "lime", [1])


def test_named_layer_is_the_breast_models_name() -> None:
    model = _breast_model("concat")
    x = torch.randn(1, 2, 1, 32, 32)
    present = torch.tensor([[True, True]])
    by_name = breast_heatmaps(model, x, present, "gradcam", [1], layer="backbone.body.layer3")[0]
    short = breast_heatmaps(model, x, present, "gradcam", [1], layer="body.layer3")[0]
    for a, b in zip(by_name, short, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(MammoLabError, match="--layer: MammoNet has no module named 'layer9'"):
        breast_heatmaps(model, x, present, "gradcam", [1], layer="layer9")
