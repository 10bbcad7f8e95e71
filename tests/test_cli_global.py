"""The command line as people meet it: help with choices, defaults and examples; completion; -q/-v; --set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mammolab.cli import app
from mammolab.cli._options import parse_sets
from mammolab.errors import MammoLabError
from mammolab.train.config import AugmentConfig, TrainConfig
from mammolab.train.options import train_options

COMMANDS = ("run", "wizard", "serve", "synth", "evaluate", "compare", "explain", "predict", "export", "organize",
            "preprocess", "augment", "models", "train", "tune")
runner = CliRunner()


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], prog_name="mammolab", env={"COLUMNS": "160", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_an_example_and_no_type_names(command: str) -> None:
    text = _help(command)
    assert "Example" in text, command
    assert not re.search(r"<(bool|str|int|float|path|list\[[^]]*\])>", text), command


def test_help_shows_choices_and_defaults_from_the_config() -> None:
    text = _help("organize")
    assert re.search(r"--abnormality\s+mass\|calc\|all\s.*\[default: mass\]", text)
    assert re.search(r"--bit-depth\s+8\|16\s.*\[default: 16\]", text)
    assert "<bool>" not in _help()  # the root's own options too
    train = _help("train")
    assert re.search(r"--regime\s+opw\|pft\|cft", train)
    assert re.search(r"--logger\s+csv\|tensorboard\|mlflow\|wandb \.\.\.", train)
    # choices the stage itself checks against, where no config model holds them
    assert re.search(r"--method\s+gradcam\|gradcam\+\+\|occlusion", _help("explain"))
    assert re.search(r"--layout\s+legacy\|nbia", _help("synth"))


def test_every_train_option_is_described_once_and_listed_in_help() -> None:
    for model in (TrainConfig, AugmentConfig):
        missing = [name for name, f in model.model_fields.items() if not (f.description or "").strip()]
        assert not missing, f"{model.__name__} fields without a description: {missing}"
    text = re.sub(r"\s+", " ", _help("train"))
    options = train_options()
    assert {o.key for o in options} >= {"lr", "augment.hflip", "loggers", "weight_decay"}
    for o in options:
        assert f"{o.key} ({o.accepts}; default {o.default}): {o.description}"[:60] in text, o.key
    assert "augment.rotate (" in re.sub(r"\s+", " ", _help("tune"))


def test_shell_completion() -> None:
    def complete(words: str) -> list[str]:
        env = {"_MAMMOLAB_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - (
            0 if words.endswith(" ") else 1))}
        res = runner.invoke(app, [], prog_name="mammolab", env=env)
        assert res.exit_code == 0, (words, res.output, repr(res.exception))
        return res.output.split()

    assert complete("mammolab tr") == ["train"]
    assert complete("mammolab organize --kind ") == ["full", "crop", "roi"]
    assert complete("mammolab train data --regime p") == ["pft"]
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="mammolab")
    assert script.exit_code == 0 and "complete -o default -F _mammolab_completion mammolab" in script.output
    assert "--install-completion" in _help()


def test_quiet_and_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    from mammolab.progress import console

    monkeypatch.setattr(console, "quiet", False)
    monkeypatch.delenv("MAMMOLAB_QUIET", raising=False)
    monkeypatch.setenv("MAMMOLAB_QUIET", "0")
    loud = runner.invoke(app, ["models"])
    assert loud.exit_code == 0 and "resnet18" in loud.output
    quiet = runner.invoke(app, ["-q", "models"])
    assert quiet.exit_code == 0 and quiet.output.strip() == ""
    import os

    assert os.environ["MAMMOLAB_QUIET"] == "1"
    both = runner.invoke(app, ["-q", "-v", "models"])
    assert both.exit_code == 2 and "-q or -v" in both.output


def test_parse_sets() -> None:
    assert parse_sets(["lr=3e-4", "augment.hflip=0", "head_hidden=[256, 64]", "weights=none", "fold=null",
                       "name=a=b"]) == {"lr": 3e-4, "augment": {"hflip": 0}, "head_hidden": [256, 64],
                                        "weights": "none", "fold": None, "name": "a=b"}
    for bad, msg in (("lr", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"), ("a..b=1", "expected KEY=VALUE")):
        with pytest.raises(MammoLabError, match=msg):
            parse_sets([bad])
    with pytest.raises(MammoLabError, match="not a section"):
        parse_sets(["augment=1", "augment.hflip=0"])


def test_set_on_run_is_validated_like_the_yaml(tmp_path: Path) -> None:
    exp = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "demo.yaml").read_text())
    exp["out"] = str(tmp_path / "out")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    ok = runner.invoke(app, ["run", str(path), "--dry-run", "--set", "train.defaults.epochs=2",
                             "--set", "train.defaults.loggers=[csv, mlflow]"])  # trackers in an experiment
    assert ok.exit_code == 0, ok.output
    for bad, msg in (("train.defaults.epochs=many", "epochs: Input should be a valid integer"),
                     ("train.defaults.epochz=2", "epochz: unknown option"),
                     ("train.defaults.loggers=[comet]", "loggers")):
        res = runner.invoke(app, ["run", str(path), "--dry-run", "--set", bad])
        assert res.exit_code != 0 and msg in str(res.exception) + res.output, (bad, res.output)
