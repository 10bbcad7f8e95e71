"""Train config resolution: defaults < preset < YAML < command line; one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammolab.errors import MammoLabError
from mammolab.train.config import TrainConfig, resolve_train_config, result_hash


def test_preset_fills_model_regime_and_overrides() -> None:
    cfg = resolve_train_config(overrides={"model": "efficientnet_b3_optuna"})
    assert (cfg.model, cfg.regime, cfg.preset) == ("efficientnet_b3", "pft", "efficientnet_b3_optuna")
    assert cfg.head_hidden == [768, 128, 32] and cfg.head_activation == "elu" and cfg.head_dropout == 0.36
    assert cfg.lr == pytest.approx(5.6e-4) and cfg.freeze_proportion == pytest.approx(0.7)
    assert cfg.optimizer == "adamw" and cfg.image_size == 288 and cfg.weights == "imagenet"
    assert cfg.display_name == "efficientnet_b3_optuna"
    # the command line wins over the preset
    cfg = resolve_train_config(overrides={"model": "efficientnet_b3_optuna", "lr": 1e-3, "image_size": 64})
    assert cfg.lr == 1e-3 and cfg.image_size == 64
    # another regime is another config: the preset's name and its pft-only option are dropped
    cfg = resolve_train_config(overrides={"model": "efficientnet_b3_optuna", "regime": "cft"})
    assert cfg.preset is None and cfg.freeze_proportion is None and cfg.display_name == "efficientnet_b3_cft"


def test_model_defaults_and_aliases() -> None:
    cfg = resolve_train_config(overrides={"model": "mammocnn", "precision": "bf16", "devices": "2"})
    assert cfg.image_size == 512 and cfg.weights == "none" and cfg.preset == "mammocnn"
    assert cfg.precision == "bf16-mixed" and cfg.devices == 2
    cfg = resolve_train_config(overrides={"model": "resnet18", "precision": "fp16"})
    assert cfg.precision == "16-mixed" and cfg.regime == "cft" and cfg.display_name == "resnet18_cft"


def test_yaml_file_and_command_line(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("model: resnet18_pft\nepochs: 3\naugment:\n  rotate: 0\n  hflip: 0.2\nweights: none\n")
    cfg = resolve_train_config(path, overrides={"epochs": 7, "batch_size": None})
    assert cfg.model == "resnet18" and cfg.regime == "pft" and cfg.epochs == 7 and cfg.batch_size == 32
    assert cfg.augment.rotate == 0 and cfg.augment.hflip == 0.2
    # the resolved config round-trips through YAML with the same result hash
    again = TrainConfig.model_validate(cfg.model_dump(mode="json"))
    assert result_hash(again) == result_hash(cfg)
    # runtime options do not change what a run learns
    assert result_hash(cfg.model_copy(update={"num_workers": 4, "devices": 2})) == result_hash(cfg)
    assert result_hash(cfg.model_copy(update={"lr": 0.1})) != result_hash(cfg)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="--model is required"):
        resolve_train_config(overrides={"epochs": 2})
    with pytest.raises(MammoLabError, match=r"unknown model 'densenet12'.*densenet121"):
        resolve_train_config(overrides={"model": "densenet12"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: mammocnn\nlearning_rate: 0.1\n")
    with pytest.raises(MammoLabError, match=r"bad.yaml: learning_rate: unknown option"):
        resolve_train_config(bad)
    with pytest.raises(MammoLabError, match="precision"):
        resolve_train_config(overrides={"model": "mammocnn", "precision": "fp8"})
    with pytest.raises(MammoLabError, match="needs at least 75 px"):
        resolve_train_config(overrides={"model": "inception_resnet_v2", "image_size": 64})
    with pytest.raises(MammoLabError, match="pft"):
        resolve_train_config(overrides={"model": "resnet18", "freeze_proportion": 0.5})
    with pytest.raises(MammoLabError, match="no ImageNet weights"):
        resolve_train_config(overrides={"model": "mammoresnet", "weights": "imagenet"})
