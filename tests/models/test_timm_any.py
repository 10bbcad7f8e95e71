"""Any timm model as ``timm/<name>``, the all-convolutional top, two-view fusion and encoder checkpoints
with a key prefix (``--weights-prefix`` or detected)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mammolab.errors import MammoLabError
from mammolab.models import create_model, get_model_entry
from mammolab.models.heads import ViewFusion
from mammolab.models.regimes import backbone_stages
from mammolab.models.weights import detect_prefix
from mammolab.train.config import resolve_train_config

TINY = "timm/test_convnext"  # timm's 0.2M-parameter ConvNeXt (layer norm, no batch norm)


def test_timm_name_builds_with_stages_grayscale_stem_and_regimes() -> None:
    entry = get_model_entry(TINY)
    assert entry.default_size == 160 and entry.min_size == 32
    m = create_model(TINY, regime="pft", trainable_stages=1)
    assert m.backbone.stage_ends == ("stages.0", "stages.1", "stages.2", "stages.3")
    assert m.backbone.body.stem[0].weight.shape[1] == 1  # 1-channel stem
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 1)
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert any(n.startswith("backbone.body.stages.2") for n in frozen)
    assert not any(n.startswith("backbone.body.stages.3") for n in frozen) and not any("head" in n for n in frozen)
    assert len(backbone_stages(m.backbone)) == 4
    opw = create_model(TINY, regime="opw", num_outputs=4)
    assert opw.parameter_counts()["trainable"] == 64 * 4 + 4  # linear head on 64 features only
    cfg = resolve_train_config(overrides={"model": TINY, "weights": "none"})
    assert cfg.model == TINY and cfg.image_size == 160 and cfg.display_name == "timm-test_convnext_cft"
    assert resolve_train_config(overrides={"model": "timm/resnet18"}).weights == "imagenet"


def test_unknown_timm_names_suggest_close_ones() -> None:
    with pytest.raises(MammoLabError, match=r"timm has no model 'convnxt_tiny'.*timm/convnext_tiny"):
        create_model("timm/convnxt_tiny")
    with pytest.raises(MammoLabError, match=r"unknown model 'convnext_tiny'.*did you mean timm/convnext_tiny"):
        create_model("convnext_tiny")
    with pytest.raises(MammoLabError, match="timm has no model ''"):
        resolve_train_config(overrides={"model": "timm/"})


def test_allconv_top_and_two_view_fusion() -> None:
    m = create_model(TINY, head_type="allconv", head_hidden=[16])
    assert m.top.out_features == 16 and m.head.in_features == 16
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 1)
    with pytest.raises(MammoLabError, match="allconv needs a backbone with a feature map"):
        create_model("mammocnn", head_type="allconv")
    two = create_model("mammoresnet", views=2, num_outputs=4)
    assert two.views == 2 and two.head.in_features == 2 * 256
    x = torch.randn(3, 2, 1, 32, 32)
    assert two(x, torch.ones(3, 2, dtype=torch.bool)).shape == (3, 4)
    # concat: a missing view takes the present one's features, so a breast with its CC twice and a
    # breast with only its CC give the same output
    two.eval()
    dup = torch.stack([x[:, 0], x[:, 0]], 1)
    only_cc = torch.tensor([[True, False]] * 3)
    assert torch.allclose(two(dup), two(torch.stack([x[:, 0], x[:, 1]], 1), only_cc), atol=1e-5)
    fusion = ViewFusion(8, 2, "attention")
    f = torch.randn(4, 2, 8)
    w = fusion.weights(f, torch.tensor([[True, True], [True, False], [False, True], [True, True]]))
    assert torch.allclose(w.sum(1), torch.ones(4)) and w[1, 1] == 0 and w[2, 0] == 0
    assert torch.allclose(fusion(f, torch.tensor([[True, False]] * 4)), f[:, 0], atol=1e-6)


def _encoder_file(tmp_path: Path, **extra: torch.Tensor) -> tuple[Path, dict[str, torch.Tensor]]:
    src = create_model(TINY, in_chans=3).backbone.body.state_dict()
    sd = {f"visual.trunk.{k}": v for k, v in src.items()}
    sd.update(extra)
    path = tmp_path / "clip.pth"
    torch.save({"state_dict": sd}, path)
    return path, src


def test_encoder_checkpoint_with_a_prefix_detected_or_given(tmp_path: Path) -> None:
    extra = {"text.token_embedding.weight": torch.zeros(3, 2), "visual.trunk.proj.weight": torch.zeros(2, 2)}
    path, src = _encoder_file(tmp_path, **extra)
    for prefix in (None, "auto", "visual.trunk", "visual.trunk."):
        m = create_model(TINY, weights=str(path), weights_prefix=prefix)
        rep = m.backbone.weights_report
        assert rep["prefix"] == "visual.trunk." and rep["outside_prefix"] == 1 and rep["unexpected"] == ["proj.weight"]
        got = m.backbone.body.state_dict()
        assert rep["loaded"] == len(got)
        assert torch.equal(got["stages.3.blocks.0.conv_dw.weight"], src["stages.3.blocks.0.conv_dw.weight"])
        assert torch.allclose(got["stem.0.weight"], src["stem.0.weight"].sum(1, keepdim=True))  # RGB -> gray
    with pytest.raises(MammoLabError, match="no key of .* starts with 'image_encoder.'"):
        create_model(TINY, weights=str(path), weights_prefix="image_encoder")
    with pytest.raises(MammoLabError, match="applies to --weights PATH"):
        create_model(TINY, weights="none", weights_prefix="auto")
    partial = {k: v for k, v in torch.load(path, weights_only=True)["state_dict"].items() if "stages.1" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(MammoLabError, match=r"under prefix 'visual.trunk.' \(\d+ missing key\(s\), e.g. stages.1"):
        create_model(TINY, weights=str(tmp_path / "partial.pth"))
    assert detect_prefix(["a.b.x", "a.b.y", "z"], ["x", "y", "b.x"]) == "a.b."
    assert detect_prefix(["q", "r"], ["x"]) is None


def test_plain_files_stay_strict(tmp_path: Path) -> None:
    """Without a prefix a file whose keys name model keys is loaded strictly, as before."""
    body = create_model(TINY).backbone.body.state_dict()
    body["extra.weight"] = torch.zeros(1)
    torch.save(body, tmp_path / "plain.pth")
    with pytest.raises(MammoLabError, match="1 unexpected key"):
        create_model(TINY, weights=str(tmp_path / "plain.pth"))
    del body["extra.weight"]
    torch.save(body, tmp_path / "plain.pth")
    rep = create_model(TINY, weights=str(tmp_path / "plain.pth")).backbone.weights_report
    assert rep["prefix"] is None and rep["unexpected"] == []
