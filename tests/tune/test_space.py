"""Search-space parsing: distributions, JSON-encoded list choices, aliases and the unknown-parameter error."""

from __future__ import annotations

from typing import Literal

import optuna
import pytest
from pydantic import BaseModel

from mammolab.config import StrictModel
from mammolab.errors import MammoLabError
from mammolab.tune.space import Alias, CategoricalParam, FloatParam, IntParam, config_paths, load_space


class Aug(StrictModel):
    strength: float = 0.5


class Cfg(StrictModel):
    model: str = "mammocnn"
    lr: float = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    batch_size: int = 32
    head_hidden: list[int] = []
    head_dropout: float = 0.0
    augment: Aug = Aug()


ALIASES = {"head_sizes": Alias("head_hidden", "sizes"), "dropout": Alias("head_dropout", "p"),
           "augmentation_strength": Alias("augment.strength", "s"), "not_in_cfg": Alias("nowhere", "x")}


def load(data: dict) -> object:
    return load_space(data, config_model=Cfg, aliases=ALIASES, exclude=("model",))


def test_config_paths_descend_into_nested_models() -> None:
    assert config_paths(Cfg) >= {"lr", "augment", "augment.strength", "head_hidden"}


def test_parses_every_kind_and_suggests_in_range() -> None:
    space = load({
        "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
        "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "head_sizes": {"type": "categorical", "choices": [[], [256], [512, 128]]},
        "augmentation_strength": {"type": "float", "low": 0.0, "high": 1.0},
    })
    assert isinstance(space.params["lr"], FloatParam) and space.params["lr"].log
    assert isinstance(space.params["batch_size"], IntParam)
    assert isinstance(space.params["head_sizes"], CategoricalParam)
    assert space.aliases["head_sizes"].target == "head_hidden"
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen_heads = set()
    for _ in range(12):
        trial = study.ask()
        values = space.suggest(trial)
        assert 1e-5 <= values["lr"] <= 1e-2
        assert values["batch_size"] in (8, 16, 24, 32)
        assert values["head_sizes"] in ([], [256], [512, 128])
        # Optuna stores the list choice as JSON text; decode() gives the list back.
        assert space.decode(trial.params)["head_sizes"] == values["head_sizes"]
        seen_heads.add(tuple(values["head_sizes"]))
        overrides = space.overrides(values)
        assert overrides["head_hidden"] == values["head_sizes"]
        assert overrides["augment"]["strength"] == values["augmentation_strength"]
        Cfg.model_validate(overrides)
        study.tell(trial, 0.5)
    assert len(seen_heads) > 1


def test_unknown_parameter_is_one_error_naming_it() -> None:
    with pytest.raises(MammoLabError, match=r"unknown parameter 'learning_rat' .*not a train-config field"):
        load({"learning_rat": {"type": "float", "low": 0.1, "high": 1.0}})
    with pytest.raises(MammoLabError, match="'lrr'.*did you mean lr"):
        load({"lrr": {"type": "float", "low": 0.1, "high": 1.0}})
    # an alias whose target is not a config field is not offered
    with pytest.raises(MammoLabError, match="'not_in_cfg'"):
        load({"not_in_cfg": {"type": "float", "low": 0.1, "high": 1.0}})
    # the tuner sets the model itself
    with pytest.raises(MammoLabError, match="'model'.*set by the tuner"):
        load({"model": {"type": "categorical", "choices": ["a", "b"]}})


@pytest.mark.parametrize(("raw", "message"), [
    ({"type": "float", "low": 1.0, "high": 0.1}, "must not exceed"),
    ({"type": "float", "low": 0.0, "high": 0.1, "log": True}, "log: true needs low > 0"),
    ({"type": "int", "low": 1, "high": 9, "log": True, "step": 2}, "either log"),
    ({"type": "categorical", "choices": []}, "choices"),
    ({"type": "categorical", "choices": ["a", "a"]}, "distinct"),
    ({"type": "uniform", "low": 0, "high": 1}, "type: float, int or categorical"),
    ({"type": "float", "low": 0.0, "hi": 1.0}, "hi: unknown option"),
    (0.001, "must be a mapping"),
])
def test_bad_distribution_names_parameter(raw: object, message: str) -> None:
    with pytest.raises(MammoLabError, match=message) as err:
        load({"lr": raw})
    assert "'lr'" in str(err.value)


def test_check_runs_bounds_and_choices_through_the_config() -> None:
    space = load({"optimizer": {"type": "categorical", "choices": ["adamw", "rmsprop"]}})

    def validate(overrides: dict) -> BaseModel:
        from mammolab.config import load_config

        return load_config(Cfg, overrides)

    with pytest.raises(MammoLabError, match="parameter 'optimizer' value 'rmsprop' is not accepted"):
        space.check(validate)
    load({"optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}}).check(validate)


def test_empty_and_missing_files(tmp_path) -> None:
    empty = tmp_path / "space.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(MammoLabError, match="empty"):
        load_space(empty)
    with pytest.raises(MammoLabError, match="not found"):
        load_space(tmp_path / "missing.yaml")


def test_two_parameters_setting_one_field_is_an_error() -> None:
    with pytest.raises(MammoLabError, match="'head_hidden' and 'head_sizes' both set 'head_hidden'"):
        load({"head_hidden": {"type": "categorical", "choices": [[1]]},
              "head_sizes": {"type": "categorical", "choices": [[2]]}})
    with pytest.raises(MammoLabError, match="both set 'augment.strength'"):
        load({"augment": {"type": "categorical", "choices": [{"strength": 0.1}]},
              "augmentation_strength": {"type": "float", "low": 0.0, "high": 1.0}})
