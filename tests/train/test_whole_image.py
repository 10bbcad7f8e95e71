"""Whole-image training options: gradient accumulation, channels-last, gradient checkpointing, --init-from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import make_lesion_dataset

from mammolab.errors import MammoLabError
from mammolab.models import create_model
from mammolab.models.transfer import init_from_run
from mammolab.train.config import TrainConfig, resolve_train_config
from mammolab.train.fit import train

TINY = "timm/test_convnext"  # layer norm only: no batch statistics, so accumulation is exact


def _cfg(**kw: object) -> TrainConfig:
    base = {"model": TINY, "image_size": 32, "batch_size": 8, "epochs": 1, "patience": 0, "accelerator": "cpu",
            "weights": "none", "optimizer": "sgd", "momentum": 0.0, "lr": 0.05, "weight_decay": 0.0,
            "scheduler": "none", "augment": {"enabled": False}}
    return resolve_train_config(overrides={**base, **kw})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def ds32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 patients -> 16 training patients, 32 training images: whole batches of 8 and of 4."""
    return make_lesion_dataset(tmp_path_factory.mktemp("acc") / "ds", patients=22, size=32, seed=3)


def test_accumulation_equals_a_larger_batch(ds32: Path, tmp_path: Path) -> None:
    big = train(ds32, _cfg(batch_size=8), tmp_path / "b8")
    acc = train(ds32, _cfg(batch_size=4, effective_batch=8), tmp_path / "b4x2")
    small = train(ds32, _cfg(batch_size=4), tmp_path / "b4")
    assert big.info["n_images"]["train"] == 32
    assert acc.info["accumulate_grad_batches"] == 2 and big.info["accumulate_grad_batches"] == 1
    wb, wa, ws = _weights(big.run_dir), _weights(acc.run_dir), _weights(small.run_dir)
    init = create_model(TINY).state_dict()
    key = "model.backbone.body.stages.3.blocks.0.conv_dw.weight"
    assert not torch.allclose(wb[key], init[key.removeprefix("model.")])  # training moved the weights
    for k in wb:
        assert torch.allclose(wb[k], wa[k], atol=1e-5), k
    # four steps of 8 images are not eight steps of 4: the comparison can fail
    assert max((wb[k] - ws[k]).abs().max().item() for k in wb) > 1e-3


def test_channels_last_and_checkpointing_learn_the_same(ds32: Path, tmp_path: Path) -> None:
    plain = _weights(train(ds32, _cfg(), tmp_path / "plain").run_dir)
    fast = _weights(train(ds32, _cfg(channels_last=True, grad_checkpointing=True), tmp_path / "cl").run_dir)
    for k in plain:
        assert torch.allclose(plain[k], fast[k], atol=1e-4), k
    with pytest.raises(MammoLabError, match="grad-checkpointing: mammoresnet has no gradient checkpointing"):
        train(ds32, _cfg(model="mammoresnet", grad_checkpointing=True), tmp_path / "mr")
    with pytest.raises(MammoLabError, match="effective_batch 10 is not a multiple of batch_size 4"):
        _cfg(batch_size=4, effective_batch=10)


def test_init_from_copies_the_backbone_and_checks_the_architecture(ds32: Path, tmp_path: Path) -> None:
    source = train(ds32, _cfg(), tmp_path / "patch")
    src = {k.removeprefix("model.backbone."): v for k, v in _weights(source.run_dir).items()
           if k.startswith("model.backbone.")}
    target = train(ds32, _cfg(init_from=str(source.run_dir), head_type="allconv", head_hidden=[8], lr=1e-9,
                              image_size=48), tmp_path / "whole")
    info = json.loads((target.run_dir / "run.json").read_text())
    assert info["init_from"]["model"] == TINY and info["init_from"]["tensors"] == len(src)
    got = _weights(target.run_dir)
    for k, v in src.items():  # lr 1e-9: still the source's backbone after one epoch
        assert torch.allclose(got[f"model.backbone.{k}"], v, atol=1e-6), k
    assert "model.top.blocks.0.weight" in got
    fresh = create_model(TINY)
    report = init_from_run(fresh, source.run_dir)
    assert report["checkpoint"].endswith("best.ckpt")
    with pytest.raises(MammoLabError, match=r"holds a timm/test_convnext backbone, this run builds mammoresnet"):
        train(ds32, _cfg(model="mammoresnet", init_from=str(source.run_dir)), tmp_path / "bad")
    with pytest.raises(MammoLabError, match="not a training run"):
        init_from_run(create_model(TINY), tmp_path)
    # a timm model without --weights defaults to ImageNet, but not when --init-from replaces them
    assert resolve_train_config(overrides={"model": "timm/resnet18", "init_from": "x"}).weights == "none"


def test_cli_options_reach_the_config(ds32: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mammolab.cli import app

    res = CliRunner().invoke(app, ["train", str(ds32), "--model", TINY, "--out", str(tmp_path / "r"), "--weights",
                                   "none", "--batch-size", "4", "--effective-batch", "10"])
    assert res.exit_code != 0 and "effective_batch 10 is not a multiple of batch_size 4" in str(res.exception)
    res = CliRunner().invoke(app, ["train", str(ds32), "--model", "timm/convnxt_atto", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "did you mean timm/convnext_atto" in str(res.exception)
    from mammolab.train.fit import prepare_config

    cfg = prepare_config(tmp_path / "r", overrides={"model": TINY, "views": "cc+mlo", "fusion": "attention",
                                                    "head_type": "allconv", "channels_last": True})
    assert (cfg.views, cfg.fusion, cfg.head_type, cfg.channels_last) == ("cc+mlo", "attention", "allconv", True)
