"""Model registry, regimes (what is frozen really stays put), heads, presets and weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mammolab.errors import MammoLabError
from mammolab.models import CLASSIC_TEN, REGIMES, create_model, get_model_entry, list_models, list_presets
from mammolab.models.regimes import backbone_stages

ALL_MODELS = ("mammocnn", "mammoresnet", "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b3",
              "inception_resnet_v2")


def test_registry_lists_every_model_and_the_classic_ten() -> None:
    assert set(ALL_MODELS) <= set(list_models())
    assert set(CLASSIC_TEN) <= set(list_presets())
    assert len(CLASSIC_TEN) == 10
    assert CLASSIC_TEN == ("resnet18_opw", "resnet18_pft", "resnet18_cft", "densenet121_opw", "densenet121_pft",
                           "densenet121_cft", "efficientnet_b3_opw", "efficientnet_b3_cft", "efficientnet_b3_optuna",
                           "mammocnn")


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(MammoLabError, match=r"unknown model 'resnet19'.*resnet18"):
        create_model("resnet19")
    with pytest.raises(MammoLabError, match="--regime"):
        create_model("mammoresnet", regime="full")


def _step_params(model: nn.Module, size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One SGD step on a batch of 2; return the state before and after."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], torch.tensor([0.0, 1.0]))
    loss.backward()
    opt.step()
    return before, model.state_dict()


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_and_regime_trains_one_step_and_freezing_holds(name: str, regime: str) -> None:
    size = max(32, get_model_entry(name).min_size)
    model = create_model(name, regime=regime, weights="none")
    params = dict(model.named_parameters())
    frozen = {k for k, p in params.items() if not p.requires_grad}
    before, after = _step_params(model, size)
    for k, p in params.items():
        if k in frozen:
            assert p.grad is None, k
            assert torch.equal(before[k], after[k]), f"frozen {k} moved"
        else:
            assert p.grad is not None, f"trainable {k} got no gradient"
            if p.grad.abs().sum() > 0:
                assert not torch.equal(before[k], after[k]), f"trainable {k} did not move"
    head = [k for k in params if k.startswith("head.")]
    assert head and all(not torch.equal(before[k], after[k]) for k in head)
    buffers = [k for k in after if "running_" in k]
    if regime == "opw":
        assert frozen == {k for k in params if k.startswith("backbone.")}
        assert isinstance(model.head, nn.Linear)
        # Batch-norm statistics of a frozen backbone stay put: opw is "only pretrained weights".
        assert buffers and all(torch.equal(before[k], after[k]) for k in buffers)
    elif regime == "cft":
        assert not frozen
    else:
        assert frozen and any(not k.startswith("head.") and k not in frozen for k in params)
        frozen_layers = {k.rsplit(".", 1)[0] for k in frozen}
        for k in buffers:
            if k.rsplit(".", 1)[0] in frozen_layers:
                assert torch.equal(before[k], after[k]), f"BN stats of frozen layer {k} moved"


def test_pft_stage_and_proportion_controls() -> None:
    model = create_model("resnet18", regime="pft", trainable_stages=1)
    stages = backbone_stages(model.backbone)
    assert len(stages) == 5 and stages[-1][0].startswith("layer4")
    trainable = {k.split(".")[2] for k, p in model.named_parameters() if p.requires_grad and k.startswith("backbone")}
    assert trainable == {"layer4"}
    default = create_model("resnet18", regime="pft")  # last two stages
    trainable = {k.split(".")[2] for k, p in default.named_parameters() if p.requires_grad and k.startswith("backbone")}
    assert trainable == {"layer3", "layer4"}
    prop = create_model("efficientnet_b3", regime="pft", freeze_proportion=0.7)
    layers = [n for s in backbone_stages(prop.backbone) for n in s]
    assert len(prop.frozen_modules) == round(0.7 * len(layers))
    assert prop.frozen_modules[0] == "backbone.body.conv_stem"
    with pytest.raises(MammoLabError, match="trainable_stages"):
        create_model("resnet18", regime="pft", trainable_stages=9)
    with pytest.raises(MammoLabError, match="pft"):
        create_model("resnet18", regime="cft", freeze_proportion=0.5)
    # eval-pinned frozen layers stay in eval mode whenever the model is put in train mode
    prop.train()
    assert not prop.get_submodule(prop.frozen_modules[1]).training
    assert prop.head.training


def test_mammocnn_architecture_matches_the_study() -> None:
    model = create_model("mammocnn", regime="cft")
    body = model.backbone.body
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert convs[0].in_channels == 1 and all(c.kernel_size == (3, 3) for c in convs)
    drops = [m.p for m in body.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.1, 0.2, 0.3, 0.4]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in body.modules()) == 8
    assert sum(isinstance(m, nn.LeakyReLU) for m in body.modules()) == 8
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 512), (512, 128), (128, 1)]
    assert [m.p for m in model.head.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.3]
    # any input size pools to 4x4x256 = 4096 features
    assert model.backbone(torch.zeros(1, 1, 96, 80)).shape == (1, 4096)


def test_optuna_preset_head_and_freezing() -> None:
    model = create_model("efficientnet_b3_optuna")
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [768, 128, 32, 1]
    assert all(isinstance(m, nn.ELU) for m in model.head.modules() if isinstance(m, (nn.ELU, nn.ReLU)))
    assert {m.p for m in model.head.modules() if isinstance(m, nn.Dropout)} == {0.36}
    assert model.regime == "pft" and model.frozen_modules


def test_multiclass_outputs() -> None:
    model = create_model("mammoresnet", num_outputs=4)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 4)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_weights_from_file_adapt_rgb_stem_to_grayscale(tmp_path: Path, fmt: str) -> None:
    import timm

    rgb = timm.create_model("resnet18", pretrained=False, in_chans=3, num_classes=1000)
    sd = rgb.state_dict()
    path = tmp_path / f"resnet18.{fmt}"
    if fmt == "pth":
        torch.save({"state_dict": sd}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = create_model("resnet18", regime="opw", weights=str(path))
    body = model.backbone.body.state_dict()
    assert body["conv1.weight"].shape == (64, 1, 7, 7)
    assert torch.allclose(body["conv1.weight"], sd["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(body["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    assert torch.equal(body["layer2.0.bn1.running_var"], sd["layer2.0.bn1.running_var"])


def test_weights_from_a_mammolab_state_dict_and_wrong_files(tmp_path: Path) -> None:
    src = create_model("mammoresnet", weights="none")
    path = tmp_path / "mine.pth"
    torch.save(src.state_dict(), path)
    dst = create_model("mammoresnet", weights=str(path))
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k])
    with pytest.raises(MammoLabError, match="does not hold mammocnn weights"):
        create_model("mammocnn", weights=str(path))
    with pytest.raises(MammoLabError, match="file not found"):
        create_model("resnet18", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MammoLabError, match="cannot read"):
        create_model("resnet18", weights=str(bad))


def test_imagenet_weights_offline_give_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MammoLabError) as err:
        create_model("resnet18", regime="opw", weights="imagenet")
    msg = str(err.value)
    assert "--weights imagenet" in msg and "--weights /path/to/model.safetensors" in msg
    assert "timm/resnet18" in msg
    with pytest.raises(MammoLabError, match="no ImageNet weights"):
        create_model("mammocnn", weights="imagenet")
