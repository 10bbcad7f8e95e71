"""Published checkpoints load by layout: each file is made WITH ITS OWN LIBRARY (efficientnet_pytorch,
torchvision, Lightning), random weights, saved the way that library or its users save it, then loaded
through MammoLab into the matching timm architecture; features (or logits, where the head is
converted) must equal the source model's on the same input to 1e-5 in eval mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mammolab.errors import MammoLabError
from mammolab.models import create_model, load_foreign_checkpoint

torchvision = pytest.importorskip("torchvision")
TOL = 1e-5


def _random_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norm statistics and affine terms away from 0/1, so a mis-mapped norm cannot pass unseen."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def _x(channels: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(7))


def _ep_model(variant: str = "efficientnet-b0", **kw: object) -> nn.Module:
    ep = pytest.importorskip("efficientnet_pytorch")
    return _random_stats(ep.EfficientNet.from_name(variant, **kw))


def _ep_features(src: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return src._avg_pooling(src.extract_features(x)).flatten(1)


def test_efficientnet_pytorch_b0_equals_tf_efficientnet_b0_features_and_logits(tmp_path: Path) -> None:
    src = _ep_model()
    path = tmp_path / "efficientnet-b0.pth"
    torch.save(src.state_dict(), path)  # the library's own format: a plain state dict with _fc
    x = _x()
    model, rep = load_foreign_checkpoint(path, "tf_efficientnet_b0")
    with torch.no_grad():
        assert (model.eval()(x) - _ep_features(src, x)).abs().max() < TOL
    assert rep["layout"] == "efficientnet_pytorch" and rep["source"] == "efficientnet-b0"
    assert rep["missing"] == [] and rep["ignored"] == 2 and "head _fc.* 2" in rep["summary"]
    assert rep["notes"] == []  # TF 'same' padding and eps 1e-3 on both sides
    assert rep["padding"] == "static 'same' for 224 px (5 layers), as efficientnet_pytorch"
    full, rep = load_foreign_checkpoint(path, "timm/tf_efficientnet_b0", num_classes=1000)
    with torch.no_grad():
        assert (full.eval()(x) - src(x)).abs().max() < TOL  # the head converted too: same logits
    assert rep["ignored"] == 0  # every tensor but batch norm's step counters came from the file
    assert rep["converted"] == sum(not k.endswith("num_batches_tracked") for k in src.state_dict())


def test_mammo_clip_shaped_checkpoint_through_create_model(tmp_path: Path) -> None:
    """Mammo-CLIP keeps the image encoder (efficientnet_pytorch, no _fc) under image_encoder. in 'model'."""
    src = _ep_model()
    enc = {k: v for k, v in src.state_dict().items() if not k.startswith("_fc.")}
    ckpt = {"model": {**{f"image_encoder.{k}": v for k, v in enc.items()},
                      "text_encoder.embeddings.word_embeddings.weight": torch.zeros(30, 8),
                      "text_encoder.encoder.layer.0.attention.self.query.weight": torch.zeros(8, 8),
                      "image_projection.projection.weight": torch.zeros(4, 1280),
                      "text_projection.projection.weight": torch.zeros(4, 8), "logit_scale": torch.tensor(2.6)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "config": {"model": {"image_encoder": {"name": "tf_efficientnet_b5_ns-detect"}}}, "epoch": 10}
    path = tmp_path / "b0-model-best-epoch-10.tar"
    torch.save(ckpt, path)
    x = _x(1)
    for prefix in ("auto", None, "image_encoder"):
        m = create_model("timm/tf_efficientnet_b0", weights=str(path), weights_prefix=prefix).eval()
        rep = m.backbone.weights_report
        with torch.no_grad():  # grey image as 1 channel == the source fed three equal channels
            assert (m.backbone(x) - _ep_features(src, x.repeat(1, 3, 1, 1))).abs().max() < TOL
        assert rep["prefix"] == "image_encoder." and rep["ignored"] == 5 and rep["missing"] == []
        assert "text_encoder.* 2" in rep["summary"] and "efficientnet-b0 under 'image_encoder.'" in rep["summary"]
        assert "native 224 px" in rep["notes"][0]  # train keeps timm's dynamic padding and says so
    other = create_model("timm/efficientnet_b0", weights=str(path)).backbone
    assert "timm tf_efficientnet_b0 reproduces them" in other.weights_report["notes"][0]
    with pytest.raises(MammoLabError, match=r"holds efficientnet_pytorch .*efficientnet-b0 weights under "
                       r"'image_encoder.', which do not fit timm/tf_efficientnet_b2 .*--model timm/tf_efficientnet_b0"):
        create_model("timm/tf_efficientnet_b2", weights=str(path))


def test_efficientnet_pytorch_b2_detected_by_shape(tmp_path: Path) -> None:
    src = _ep_model("efficientnet-b2")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "b2.pth")
    model, rep = load_foreign_checkpoint(tmp_path / "b2.pth", "tf_efficientnet_b2")
    # efficientnet_pytorch pads for 260 px: at 64 and 100 px some stride-2 inputs have another parity
    # (65 vs 16 at the third stage), where timm's dynamic TF padding shifts by a pixel; the conversion
    # fixes timm's padding to efficientnet_pytorch's, so both sizes agree.
    for size in (64, 100):
        x = _x(size=size)
        with torch.no_grad():
            assert (model.eval()(x) - _ep_features(src, x)).abs().max() < TOL
    assert rep["source"] == "efficientnet-b2"
    dynamic, _ = load_foreign_checkpoint(tmp_path / "b2.pth", "tf_efficientnet_b2", static_padding=False)
    with torch.no_grad():  # without the fix the shift is visible: the test above can fail
        assert (dynamic.eval()(_x(size=64)) - _ep_features(src, _x(size=64))).abs().max() > 1e-4


def test_torchvision_resnet18_dataparallel_and_logits(tmp_path: Path) -> None:
    src = _random_stats(torchvision.models.resnet18(num_classes=5))
    path = tmp_path / "dp.pth"
    torch.save(nn.DataParallel(src).state_dict(), path)  # module.conv1.weight, ...
    x = _x()
    model, rep = load_foreign_checkpoint(path, "resnet18", num_classes=5)
    with torch.no_grad():
        assert (model.eval()(x) - src(x)).abs().max() < TOL
    assert rep["layout"] == "torchvision-names" and rep["missing"] == []
    gray = create_model("resnet18", weights=str(path)).eval()  # MammoLab's 1-channel backbone, head ignored
    feats = nn.Sequential(*list(src.children())[:-1], nn.Flatten())
    with torch.no_grad():
        assert (gray.backbone(x[:, :1]) - feats(x[:, :1].repeat(1, 3, 1, 1))).abs().max() < TOL
    assert "head fc.* 2" in gray.backbone.weights_report["summary"]


def test_torchvision_densenet121_legacy_names(tmp_path: Path) -> None:
    src = _random_stats(torchvision.models.densenet121())
    # Checkpoints from torchvision < 0.3 spell norm.1 / conv.2; torchvision's own loader renames them.
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in src.state_dict().items()}
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "densenet121-legacy.pth")
    model, rep = load_foreign_checkpoint(tmp_path / "densenet121-legacy.pth", "densenet121", num_classes=1000)
    x = _x()
    with torch.no_grad():
        assert (model.eval()(x) - src(x)).abs().max() < TOL
    assert rep["missing"] == [] and rep["ignored"] == 0


def test_torchvision_efficientnet_b0_and_v2_s(tmp_path: Path) -> None:
    src = _random_stats(torchvision.models.efficientnet_b0(num_classes=3))
    torch.save(src.state_dict(), tmp_path / "tv_b0.pth")
    x = _x()
    model, rep = load_foreign_checkpoint(tmp_path / "tv_b0.pth", "efficientnet_b0", num_classes=3)
    with torch.no_grad():
        assert (model.eval()(x) - src(x)).abs().max() < TOL
    assert rep["layout"] == "torchvision-efficientnet" and rep["source"] == "efficientnet_b0" and not rep["notes"]
    v2 = _random_stats(torchvision.models.efficientnet_v2_s())
    torch.save(v2.state_dict(), tmp_path / "tv_v2s.pth")
    # torchvision's V2 uses batch-norm eps 1e-3, timm's efficientnetv2_s 1e-5: said in the report...
    _, rep = load_foreign_checkpoint(tmp_path / "tv_v2s.pth", "efficientnetv2_s")
    assert rep["source"] == "efficientnetv2_s" and "eps 0.001" in rep["notes"][0]
    # ...and with the source's eps the timm model computes the same features.
    import timm

    same = timm.create_model("efficientnetv2_s", num_classes=0, bn_eps=1e-3)
    model, rep = load_foreign_checkpoint(tmp_path / "tv_v2s.pth", same)
    feats = nn.Sequential(v2.features, v2.avgpool, nn.Flatten())
    with torch.no_grad():
        assert (model.eval()(x) - feats(x)).abs().max() < TOL
    assert rep["notes"] == []


def test_lightning_checkpoint_from_a_real_trainer(tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torchvision.models.resnet18(num_classes=2)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])), batch_size=2)
    module = Module()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "lit.ckpt")
    assert "pytorch-lightning_version" in torch.load(tmp_path / "lit.ckpt", weights_only=True)
    model, rep = load_foreign_checkpoint(tmp_path / "lit.ckpt", "resnet18", num_classes=2)
    x = _x()
    with torch.no_grad():
        assert (model.eval()(x) - module.model.eval()(x)).abs().max() < TOL
    assert rep["prefix"] == "model." and rep["missing"] == []


def test_unknown_layout_and_pickled_objects_are_one_line(tmp_path: Path) -> None:
    torch.save({"state_dict": {"encoder_x.w0": torch.zeros(2), "encoder_x.w1": torch.zeros(2)}}, tmp_path / "u.pth")
    with pytest.raises(MammoLabError) as err:
        create_model("resnet18", weights=str(tmp_path / "u.pth"))
    msg = str(err.value)
    assert "u.pth" in msg and "first keys: encoder_x.w0, encoder_x.w1" in msg and "efficientnet_pytorch" in msg
    assert "\n" not in msg
    torch.save({"model": {}, "epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(MammoLabError, match="holds no tensors .*top-level keys: model, epoch"):
        create_model("resnet18", weights=str(tmp_path / "empty.pth"))
    torch.save({"model": torchvision.models.resnet18().state_dict(), "opt": Path("x")}, tmp_path / "obj.pth")
    with pytest.raises(MammoLabError, match=r"obj.pth.*re-save"):
        create_model("resnet18", weights=str(tmp_path / "obj.pth"))


def _lesions(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("train_fixtures", Path(__file__).parents[1] / "train" /
                                                  "train_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.make_lesion_dataset(root, patients=12, size=32, seed=3)


def test_mammo_clip_convention_is_recorded_and_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained from a Mammo-CLIP-shaped file with --weights-convention mammo-clip records the
    mean/std it used (recipe.json, run.json report) and its rebuilt model for predict applies them."""
    from mammolab.infer import load_run
    from mammolab.train.config import resolve_train_config
    from mammolab.train.fit import train

    monkeypatch.setenv("MAMMOLAB_CACHE", str(tmp_path / "cache"))
    src = _ep_model()
    torch.save({"model": {f"image_encoder.{k}": v for k, v in src.state_dict().items() if "_fc" not in k},
                "epoch": 3}, tmp_path / "clip.pth")
    cfg = resolve_train_config(overrides={
        "model": "timm/tf_efficientnet_b0", "weights": str(tmp_path / "clip.pth"), "weights_prefix": "auto",
        "weights_convention": "mammo-clip", "image_size": 32, "batch_size": 8, "epochs": 1, "patience": 0,
        "accelerator": "cpu"})
    result = train(_lesions(tmp_path / "ds"), cfg, tmp_path / "run")
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recipe["transform"]["mean"] == pytest.approx(0.3089279)
    assert recipe["transform"]["std"] == pytest.approx(0.25053555408335154)
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    rep = json.dumps(run_json)
    assert "efficientnet-b0 under 'image_encoder.'" in rep and result.info["weights_report"]["missing"] == []
    run = load_run(tmp_path / "run")
    assert (run.model.mean, run.model.std) == pytest.approx((0.3089279, 0.25053555408335154))
    with pytest.raises(Exception, match="mammo-clip"):
        resolve_train_config(overrides={"model": "resnet18", "weights_convention": "mammo-clap"})
