"""One word per idea on the command line (#24 part 3), and the old spellings' one release of grace.

The command tree is walked as ``mammolab --help`` builds it: every option with the same name has the
same spellings, type and choices on every command; each idea has one name, on exactly the commands
that have the idea; the old spellings are on no command, yet still parse to what their new spelling
parses to, with one warning line on stderr that names the new spelling.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mammolab.cli import app
from mammolab.cli._help import polish_command
from mammolab.cli._options import DEPRECATED, SPLIT_CHOICES, rewrite_deprecated
from mammolab.errors import MammoLabError

RUNNER = CliRunner()


def _root() -> Any:
    return typer.main.get_command(app)


def _options() -> Iterator[tuple[str, Any]]:
    """``(command name, option)`` for every option of every command, with the help's choices attached."""
    for name, command in _root().commands.items():
        polish_command(name, command)
        for param in command.params:
            if param.param_type_name == "option":
                yield name, param


def _long(param: Any) -> str:
    return next(o for o in param.opts if o.startswith("--"))


#: idea -> (its one option name, the commands that have the idea). A new command with one of these
#: ideas, or a second name for one, fails here until this table and the CHANGELOG say so.
IDEAS: dict[str, tuple[str, set[str]]] = {
    "redo or replace an output that is already there": (
        "--overwrite", {"organize", "train", "export", "evaluate", "explain"}),
    "worker processes of a stage": ("--workers", {"synth", "organize", "preprocess", "augment"}),
    "DataLoader worker processes inside training": ("--loader-workers", {"train"}),
    "which split": ("--split", {"evaluate", "compare", "explain"}),
    "flip test-time augmentation": ("--tta", {"predict", "evaluate", "explain", "serve"}),
    "which weights of a run": ("--checkpoint", {"predict", "evaluate", "explain", "export", "serve"}),
    "model input size": ("--image-size", {"train", "tune"}),
    "height of a synthetic film": ("--film-height", {"synth"}),
    "size of the images preprocess writes": ("--size", {"preprocess"}),
    "bit depth of written images": ("--bit-depth", {"organize", "preprocess"}),
    "experiment trackers": ("--logger", {"train", "tune"}),
    "model architecture: one image or a CC+MLO breast": ("--views", {"train"}),
    "how predict groups its files into breasts": ("--file-views", {"predict"}),
}
#: Spellings that no command may show (their ideas have the names above).
RETIRED = {"--force", "--num-workers", "--tensorboard", "--num_workers", "--nworkers", "--jobs"}
#: (option, command) whose value type differs from the same option elsewhere, and why.
TYPE_EXCEPTIONS = {("--config", "preprocess"): "names a shipped preset (full, patch) as well as a YAML file"}


def test_each_idea_has_one_name_on_exactly_its_commands() -> None:
    where: dict[str, set[str]] = {}
    for name, param in _options():
        where.setdefault(_long(param), set()).add(name)
    for idea, (option, commands) in IDEAS.items():
        assert where.get(option, set()) == commands, f"{idea}: {option} is on {sorted(where.get(option, ()))}"
    # hidden options count too: an old spelling lives in DEPRECATED, never as a second option
    spellings: dict[str, set[str]] = {}
    for name, p in _options():
        spellings.setdefault(name, set()).update(p.opts, p.secondary_opts)
    shown = set().union(*spellings.values())
    assert not shown & RETIRED, sorted(shown & RETIRED)
    for command, table in DEPRECATED.items():
        assert not spellings[command] & set(table), f"{command} still has {sorted(spellings[command] & set(table))}"
    assert "-j" in next(p for n, p in _options() if n == "synth" and p.name == "workers").opts


def test_same_name_same_spellings_type_and_choices_everywhere() -> None:
    seen: dict[str, tuple[str, Any]] = {}
    for name, param in _options():
        long = _long(param)
        if (long, name) in TYPE_EXCEPTIONS:
            continue
        choices = getattr(param, "_mammolab_choices", None)
        signature = (tuple(sorted(param.opts + param.secondary_opts)), str(param.type_descriptor.annotation),
                     tuple(choices) if choices else None, bool(param.is_flag))
        first = seen.setdefault(long, (name, signature))
        assert first[1] == signature, f"{long}: {first[0]} has {first[1]}, {name} has {signature}"
    assert seen["--split"][1][2] == SPLIT_CHOICES and seen["--bit-depth"][1][2] == ("8", "16")
    assert seen["--checkpoint"][1][2] == ("best", "last")


def _parse(command: str, args: list[str]) -> dict[str, Any]:
    """The values ``mammolab COMMAND ARGS`` would run with (arguments are parsed, nothing is run)."""
    root = _root()
    ctx = typer.Context(root, info_name="mammolab", resilient_parsing=False)
    cmd = root.get_command(ctx, command)
    return dict(cmd.make_context(command, list(args), parent=ctx).params)


# old spelling (with its value) -> new spelling, for every entry of DEPRECATED
OLD_AND_NEW = [
    ("evaluate", ["RUN", "--force"], ["RUN", "--overwrite"], "--overwrite"),
    ("explain", ["RUN", "-o", "OUT", "--force"], ["RUN", "-o", "OUT", "--overwrite"], "--overwrite"),
    ("train", ["DATA", "-o", "RUN", "--num-workers", "3"], ["DATA", "-o", "RUN", "--loader-workers", "3"],
     "--loader-workers"),
    ("train", ["DATA", "-o", "RUN", "--num-workers=2"], ["DATA", "-o", "RUN", "--loader-workers=2"],
     "--loader-workers"),
    ("train", ["DATA", "-o", "RUN", "--tensorboard", "--logger", "csv"],
     ["DATA", "-o", "RUN", "--logger", "tensorboard", "--logger", "csv"], "--logger tensorboard"),
    ("synth", ["OUT", "--image-size", "256"], ["OUT", "--film-height", "256"], "--film-height"),
    ("predict", ["RUN", "a.png", "b.png", "--views", "cc+mlo"], ["RUN", "a.png", "b.png", "--file-views", "cc+mlo"],
     "--file-views"),
]


@pytest.mark.parametrize(("command", "old", "new", "spelled"), OLD_AND_NEW)
def test_old_spelling_parses_as_the_new_one_and_warns_once(command: str, old: list[str], new: list[str],
                                                           spelled: str, capsys: pytest.CaptureFixture[str]) -> None:
    from_new = _parse(command, new)
    assert capsys.readouterr().err == ""  # the new spelling is silent
    from_old = _parse(command, old)
    err = capsys.readouterr()
    assert from_old == from_new
    assert err.out == ""
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and "deprecated" in lines[0] and lines[0].endswith(f"use {spelled}"), lines


def test_every_deprecated_spelling_is_tested_and_parses() -> None:
    tested = {(c, next(a.partition("=")[0] for a in old if a.partition("=")[0] in DEPRECATED[c]))
              for c, old, _, _ in OLD_AND_NEW}
    assert tested == {(c, o) for c, table in DEPRECATED.items() for o in table}


def test_rewrite_deprecated_touches_only_option_tokens() -> None:
    warned: list[str] = []
    out = rewrite_deprecated("evaluate", ["RUN", "--force", "--force", "--", "--force"], warned.append)
    assert out == ["RUN", "--overwrite", "--overwrite", "--", "--force"]  # after --, a file named --force
    assert len(warned) == 1 and "mammolab evaluate --force" in warned[0]
    assert rewrite_deprecated("evaluate", ["RUN", "--forceful"], warned.append) == ["RUN", "--forceful"]
    assert rewrite_deprecated("compare", ["--force"], warned.append) == ["--force"]  # not an alias there
    assert len(warned) == 1


def test_old_spelling_warns_on_stderr_and_keeps_stdout_clean(tmp_path: Path) -> None:
    """``predict --json`` pipes JSON: the deprecation line must not land in it."""
    res = RUNNER.invoke(app, ["predict", str(tmp_path / "no-run"), str(tmp_path / "a.png"), "--views", "cc",
                              "--json"])
    assert res.exit_code != 0 and res.stdout == ""
    assert res.stderr.count("deprecated") == 1 and "use --file-views" in res.stderr
    assert isinstance(res.exception, MammoLabError)  # parsing went on: the run folder is what is missing


@pytest.mark.parametrize("command", ["evaluate", "compare", "explain"])
def test_split_is_checked_the_same_way_on_every_command(command: str, tmp_path: Path) -> None:
    base = {"evaluate": [str(tmp_path)], "compare": [str(tmp_path), "-o", str(tmp_path / "r")],
            "explain": [str(tmp_path), "-o", str(tmp_path / "e")]}[command]
    bad = RUNNER.invoke(app, [command, *base, "--split", "bogus"])
    assert bad.exit_code == 2 and "--split" in bad.output and "train, val, test, all" in bad.output
    every = RUNNER.invoke(app, [command, *base, "--split", "all"])
    assert isinstance(every.exception, MammoLabError)
    assert str(every.exception).startswith("--split all: expected train, val or test")


def test_split_all_is_an_external_dataset_s(tmp_path: Path) -> None:
    """evaluate --split all goes on to the dataset check with --dataset (and stops before it without)."""
    res = RUNNER.invoke(app, ["evaluate", str(tmp_path), "--split", "all", "--dataset", str(tmp_path)])
    assert isinstance(res.exception, MammoLabError) and not str(res.exception).startswith("--split")


@pytest.mark.parametrize("command", ["organize", "preprocess"])
def test_bit_depth_is_the_same_choice_on_both_commands(command: str, tmp_path: Path) -> None:
    args = [str(tmp_path), "-o", str(tmp_path / "out"), "--bit-depth", "12"]
    res = RUNNER.invoke(app, [command, *args])
    assert res.exit_code == 2 and "--bit-depth" in res.output and "8, 16" in res.output
    assert not (tmp_path / "out").exists()
    assert _parse(command, [*args[:-1], "8"])["bit_depth"] == 8


def test_serve_and_explain_take_tta_to_their_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The flag reaches the stage function (the outcome itself: tests/app/test_tta_everywhere.py)."""
    import mammolab.app.serve as serve
    import mammolab.explain.runner as runner

    seen: dict[str, Any] = {}

    def stop(name: str) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            seen[name] = kwargs
            raise MammoLabError("stopped here")
        return fake

    monkeypatch.setattr(serve, "make_server", stop("serve"))
    monkeypatch.setattr(runner, "explain_run", stop("explain"))
    RUNNER.invoke(app, ["serve", str(tmp_path), "--tta"])
    RUNNER.invoke(app, ["explain", str(tmp_path), "-o", str(tmp_path / "e"), "--tta", "--force"])
    assert seen["serve"]["tta"] is True
    assert seen["explain"]["tta"] is True and seen["explain"]["force"] is True


def test_experiment_synth_key_follows_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    from pydantic import ValidationError

    from mammolab.app.experiment import SynthSection

    new = SynthSection(patients=8, film_height=256)
    assert capsys.readouterr().err == ""
    old = SynthSection.model_validate({"patients": 8, "image_size": 256})
    assert old == new and new.args()["image_size"] == 256  # synth.json keeps synthesize's name: outputs stay current
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.synth.image_size is deprecated" in err and err.strip().endswith("film_height")
    with pytest.raises(ValidationError, match="film_height only"):
        SynthSection.model_validate({"patients": 8, "image_size": 256, "film_height": 256})


def test_python_api_says_overwrite_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``ml.evaluate``/``ml.explain`` mirror the CLI: ``overwrite=``; ``evaluate(force=)`` warns for one release."""
    import mammolab.api as ml
    import mammolab.evaluate.evaluation as evaluation
    import mammolab.explain.runner as runner

    seen: list[dict[str, Any]] = []

    def stop(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise MammoLabError("stopped here")

    monkeypatch.setattr(evaluation, "evaluate_run", stop)
    monkeypatch.setattr(runner, "explain_run", stop)
    for call in (lambda: ml.evaluate(tmp_path, overwrite=True), lambda: ml.explain(tmp_path, overwrite=True),
                 lambda: ml.evaluate(tmp_path)):
        with pytest.raises(MammoLabError, match="stopped here"):
            call()
    with pytest.warns(DeprecationWarning, match="use overwrite="), pytest.raises(MammoLabError):
        ml.evaluate(tmp_path, force=True)
    assert [s["force"] for s in seen] == [True, True, False, True]
    assert "overwrite" not in seen[1]
