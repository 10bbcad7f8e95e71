"""The generated references cover the code: every CLI command and option, every public API object."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
from blocks import DOCS, ROOT, python_blocks

sys.path.insert(0, str(DOCS / "hooks"))
import cli_reference  # noqa: E402
import figures  # noqa: E402

#: The public API the reference must document: module -> names (``__all__`` where the module has one).
PUBLIC = {
    "mammolab": None,
    "mammolab.api": ["Evaluation", "Explanation", "Comparison", "compare", "evaluate", "explain", "train"],
    "mammolab.evaluate.predict": ["Predictor", "predict_files"],
    "mammolab.infer.predictor": ["Predictor", "load_run"],
    "mammolab.preprocess.ops": None,
    "mammolab.evaluate.metrics": None,
}


def public_objects() -> list[tuple[str, object]]:
    """``(name, object)`` for every public object the API page must document."""
    out = []
    for module_name, names in PUBLIC.items():
        module = importlib.import_module(module_name)
        for name in names or module.__all__:
            if name.startswith("__"):
                continue
            out.append((name, getattr(module, name)))
    return out


def documented_path(name: str, obj: object) -> str:
    """Where the object is defined, as a ``:::`` directive names it."""
    if not hasattr(obj, "__qualname__") or not hasattr(obj, "__module__"):
        return name  # a constant: its module is checked by name below
    if isinstance(obj, type(importlib)):  # a callable subpackage: the function it calls
        obj = obj.__call__ if not callable(getattr(obj, "__wrapped__", None)) else obj.__wrapped__
    return f"{obj.__module__}.{obj.__qualname__}"


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    text = cli_reference.render()
    root = cli_reference.root_command()
    commands = 0
    for command, ctx in cli_reference.walk(root):
        commands += 1
        assert f"## `{ctx.command_path}`" in text, ctx.command_path
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for opt in (*param.opts, *param.secondary_opts) if param.param_type_name == "option" else ():
                assert re.search(rf"`[^`]*{re.escape(opt)}\b[^`]*`", text), f"{ctx.command_path} {opt}"
            if param.param_type_name == "argument":
                assert param.name.upper() in text, f"{ctx.command_path} {param.name}"
            if param.help:
                assert cli_reference._text(param.help)[:40] in text
    assert commands >= 16  # mammolab itself and its 15 commands
    assert cli_reference.MARKER in (DOCS / "reference" / "cli.md").read_text()


def test_cli_reference_escapes_markdown() -> None:
    assert cli_reference._text("a_b *c* <path> [x|y]\n\n\b\nnext") == r"a\_b \*c\* &lt;path&gt; \[x\|y\]" + "\n\nnext"


def test_every_public_object_is_in_the_api_reference() -> None:
    page = (DOCS / "reference" / "api.md").read_text()
    directives = set(re.findall(r"^::: ([\w.]+)$", page, re.M))
    examples = "\n".join(b.code for b in python_blocks(DOCS / "reference" / "api.md"))
    missing, unused = [], []
    for name, obj in public_objects():
        if name == "__version__":
            continue
        path = documented_path(name, obj)
        module_level = [d for d in directives if d.endswith(f".{name}")]
        if path not in directives and not module_level:
            missing.append(path)
        if not re.search(rf"\b{re.escape(name)}\b", examples):
            unused.append(name)
    assert not missing, f"not in docs/reference/api.md: {missing}"
    assert not unused, f"no runnable example uses: {unused}"
    for directive in directives:  # every directive names something that exists
        module, _, attr = directive.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), directive


def test_readme_is_short_and_links_into_the_site() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "make test" in readme and "make demo" in readme
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), link


def test_figure_markers_render_and_missing_figures_fail(tmp_path) -> None:
    (tmp_path / "x.json").write_text('{"columns": ["a", "b"], "rows": [[1, 2]], "runs": {"r": {"auc": 0.5}},'
                                     '"stamp": {"machine": {"cpu": "CPU Z", "cores": 2}, "date": "D",'
                                     '"mammolab_version": "0.1", "git_commit": "abcdef1234567"}}')
    out = figures.render("<!-- figure: x -->\nAUC <!-- value: x runs.r.auc -->", tmp_path)
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in out and "CPU Z (2 cores, no GPU)" in out and "AUC 0.5" in out
    assert "`abcdef1234`" in out
    with pytest.raises(FileNotFoundError, match="nope.json"):
        figures.render("<!-- figure: nope -->", tmp_path)
    with pytest.raises(KeyError, match="runs.q"):
        figures.render("<!-- value: x runs.q -->", tmp_path)


def test_demo_figures_file_is_stamped() -> None:
    data = figures.load("demo")
    assert data["stamp"]["machine"]["cores"] and data["stamp"]["git_commit"]
    assert len(data["rows"]) == 3 and all(0 <= r["auc"] <= 1 for r in data["runs"].values())
