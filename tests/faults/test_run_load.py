"""Damaged runs are refused when loaded (issue #23): ``predict`` and ``serve`` check ``recipe.json``,
``config.yaml`` and the checkpoint against their schema and each other before anything is predicted
or served: one line naming the file and the field, exit code 2, and ``serve`` never starts.

Before: an unknown step, a 100000 px resize, three classes on a one-output model or a CLAHE grid of 0
gave predict a traceback and a server that answered 500 to every request; ``std: 0`` gave NaN
probabilities; a recipe without ``preprocess`` silently skipped preprocessing; a missing best.ckpt
fell back to last.ckpt without a word. Every case is a copy of the session's trained run (small
files copied, checkpoints linked) with one thing damaged, run through the console entry point in
this process.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fault_tools import cli_in_process


def _damaged(src: Path, dest: Path, *, recipe: Callable[[dict], Any] | None = None, recipe_text: str | None = None,
             config: Callable[[dict], Any] | None = None, drop: tuple[str, ...] = (),
             truncate: str | None = None) -> Path:
    """A copy of run ``src`` with one thing damaged (checkpoints are symlinks unless truncated)."""
    dest.mkdir()
    for name in ("config.yaml", "run.json", "recipe.json"):
        shutil.copy(src / name, dest / name)
    if recipe is not None:
        data = json.loads((dest / "recipe.json").read_text())
        recipe(data)
        (dest / "recipe.json").write_text(json.dumps(data))
    if recipe_text is not None:
        (dest / "recipe.json").write_text(recipe_text)
    if config is not None:
        data = yaml.safe_load((dest / "config.yaml").read_text())
        config(data)
        (dest / "config.yaml").write_text(yaml.safe_dump(data))
    (dest / "checkpoints").mkdir()
    for name in ("best.ckpt", "last.ckpt"):
        target = src / "checkpoints" / name
        if name == truncate:
            (dest / "checkpoints" / name).write_bytes(target.read_bytes()[: target.stat().st_size // 3])
        elif name not in drop:
            (dest / "checkpoints" / name).symlink_to(target)
    return dest


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        *parents, key = path.split(".")
        for p in parents:
            data = data[p]
        data[key] = value

    return edit


def _steps(*steps: dict) -> Callable[[dict], None]:
    return _set("preprocess", [{"config_hash": None, "steps": list(steps)}])


#: case -> (how the run is damaged, what the one line must name besides the file)
CASES: dict[str, tuple[dict[str, Any], str, tuple[str, ...]]] = {
    "unknown step": ({"recipe": _steps({"sharpen": {"amount": 2}})}, "recipe.json", ("unknown step 'sharpen'",)),
    "huge resize": ({"recipe": _set("transform.image_size", 100000)}, "recipe.json",
                    ("transform.image_size", "16384")),
    "classes vs outputs": ({"recipe": _set("classes", ["benign", "malignant", "calcification"])}, "recipe.json",
                           ("num_outputs", "3 classes")),
    "clahe grid 0": ({"recipe": _steps({"clahe": {"clip_limit": 2.0, "tile_grid": 0}})}, "recipe.json",
                     ("clahe", "tile_grid")),
    "std 0": ({"recipe": _set("transform.std", 0)}, "recipe.json", ("transform.std", "above 0")),
    "no preprocess key": ({"recipe": lambda d: d.pop("preprocess")}, "recipe.json", ("preprocess", "missing")),
    "not JSON": ({"recipe_text": '{"name": "run", "classes": ['}, "recipe.json", ("not a valid JSON",)),
    "config.yaml disagrees": ({"config": _set("resize", "pad")}, "recipe.json",
                              ("transform.resize 'stretch' differs from config.yaml's resize 'pad'",)),
    "classes vs checkpoint": ({"recipe": _set("classes", ["low", "high"])}, "recipe.json",
                              ("classes ['low', 'high'] differ from the checkpoint's",)),
    "best.ckpt missing": ({"drop": ("best.ckpt",)}, "checkpoints/best.ckpt", ("not found", "--checkpoint last")),
    "best.ckpt truncated": ({"truncate": "best.ckpt"}, "checkpoints/best.ckpt", ("unreadable",)),
}


@pytest.fixture(scope="module")
def image(trained) -> Path:
    return sorted(trained.data.root.glob("test/*/*.png"))[0]


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that would start is stopped at once (Ctrl-C), so a case that is not refused cannot hang."""
    from mammolab.app import serve

    def stop(self: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(serve.MammoServer, "serve_forever", stop)


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_run_is_refused_by_predict_and_serve(case: str, trained, image: Path, tmp_path: Path, no_serving,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    damage, file, words = CASES[case]
    run = _damaged(trained.run, tmp_path / "run", **damage)
    for args in (["predict", run, image, "--json"], ["serve", run, "--port", "0"]):
        code, out, lines = cli_in_process(args, capsys)
        assert code == 2, (args[0], lines)
        assert len(lines) == 1 and lines[0].startswith(f"error: {run / file}"), (args[0], lines)
        assert all(w in lines[0] for w in words), (args[0], lines[0])  # one line: serve never said "serving"


def test_last_checkpoint_only_when_asked_and_named(trained, image: Path, tmp_path: Path, no_serving,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Without best.ckpt, ``--checkpoint last`` is the way on; every answer says which weights scored."""
    run = _damaged(trained.run, tmp_path / "run", drop=("best.ckpt",))
    code, out, lines = cli_in_process(["predict", run, image, "--json", "--checkpoint", "last"], capsys)
    assert code == 0, lines
    (result,) = json.loads(out[out.index("["):])
    assert result["checkpoint"] == "last.ckpt" and 0.0 <= result["prob"] <= 1.0
    code, _, lines = cli_in_process(["serve", run, "--port", "0", "--checkpoint", "last"], capsys)
    assert code == 0 and lines[0].startswith("serving ") and lines[-1] == "stopped", lines


def test_tune_set_values_are_typed(lesions, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``tune --set epochs=true`` read as 1 epoch before; now the key and the type expected, before any trial."""
    out = tmp_path / "tune"
    for value, expected in (("epochs=true", "--set epochs=true: expected int for epochs, got a bool"),
                            ("lr=fast", "--set lr=fast: expected float for lr")):
        code, _, lines = cli_in_process(["tune", lesions, "--model", "mammocnn", "--trials", "1", "--out", out,
                               "--set", value], capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert not out.exists()
