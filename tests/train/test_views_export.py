"""Two-view (CC + MLO) runs exported to ONNX and TorchScript: the folder says it holds a breast model,
and ``Predictor.load(EXPORTED)`` gives each breast the run's probability (both views, one view missing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_views import two_view_ds  # noqa: F401  (the module-scoped dataset fixture)
from test_views_predict import two_view_run  # noqa: F401  (a tiny attention-fusion run, evaluated on test)
from typer.testing import CliRunner

from mammolab.errors import MammoLabError
from mammolab.evaluate.breast import is_two_view, predict_breast_files, run_views
from mammolab.evaluate.evaluation import load_evaluation
from mammolab.evaluate.export import export_run
from mammolab.evaluate.predict import Predictor, predict_files

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exports(two_view_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    run, _ = two_view_run
    root = tmp_path_factory.mktemp("two-view-exports")
    return {fmt: export_run(run, root / fmt, fmt).out for fmt in ("onnx", "torchscript")}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_breast_model_gives_the_run_probabilities(two_view_run: tuple[Path, Path],  # noqa: F811
                                                           exports: dict[str, Path], fmt: str) -> None:
    run, ds = two_view_run
    out = exports[fmt]
    _, preds = load_evaluation(run, "test")
    both = preds[preds["views"] == "cc+mlo"]
    one = preds[preds["views"] == "cc"]
    assert len(both) >= 2 and len(one) == 1

    files = [ds / p for _, r in both.iterrows() for p in (r["cc_path"], r["mlo_path"])]
    results = predict_breast_files(out, files, "cc+mlo")
    assert not any("error" in r for r in results)
    for res, (_, row) in zip(results, both.iterrows(), strict=True):
        assert abs(res["prob"] - row["prob"]) < 1e-4, (fmt, res["path"], res["prob"], row["prob"])
        assert res["views"] == "cc+mlo" and res["missing_view"] is None
    assert max(r["prob"] for r in results) - min(r["prob"] for r in results) > 1e-3  # not one constant output

    (single,) = predict_breast_files(out, [ds / one.iloc[0]["cc_path"]], "cc")  # the MLO view is missing
    assert abs(single["prob"] - one.iloc[0]["prob"]) < 1e-4
    assert single["missing_view"] == "MLO" and any("no MLO view" in w for w in single["warnings"])

    # TTA and an MLO-only breast go through the same backend: equal to the run folder's own answers.
    row = both.iloc[0]
    for group, views in (([ds / row["cc_path"], ds / row["mlo_path"]], "cc+mlo"), ([ds / row["mlo_path"]], "mlo")):
        (a,) = predict_breast_files(out, group, views, tta=True)
        (b,) = predict_breast_files(run, group, views, tta=True)
        assert abs(a["prob"] - b["prob"]) < 1e-4 and a["missing_view"] == b["missing_view"]


def test_exported_folder_states_the_two_view_inputs(two_view_run: tuple[Path, Path],  # noqa: F811
                                                    exports: dict[str, Path]) -> None:
    import onnxruntime as ort

    run, _ = two_view_run
    for fmt, out in exports.items():
        recipe = json.loads((out / "recipe.json").read_text())
        assert recipe["views"] == "cc+mlo" and run_views(out) == "cc+mlo" and is_two_view(out)
        card = json.loads((out / "model_card.json").read_text())
        assert card["views"] == "cc+mlo" and card["format"] == fmt
        assert card["inputs"]["x"]["shape"] == ["N", 2, 1, 32, 32] and card["inputs"]["x"]["views"] == ["CC", "MLO"]
        assert card["inputs"]["present"]["shape"] == ["N", 2]
        assert card["n_breasts"]["train"] > 0 and card["export_check"]["max_abs_diff_vs_pytorch"] < 1e-3
        md = (out / "model_card.md").read_text()
        assert "x [N, 2, 1, 32, 32]" in md and "two-view breast model" in md and "| test | " in md
        assert "breasts (patients)" in md
    assert (exports["onnx"] / "model.onnx").is_file() and (exports["torchscript"] / "model.pt").is_file()
    session = ort.InferenceSession(str(exports["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["x", "present"] and inputs["x"][1:] == [2, 1, 32, 32] and inputs["present"][1:] == [2]
    assert isinstance(inputs["x"][0], str)  # a named, dynamic batch axis

    # Dynamic batch: 5 breasts (the export traced 2), mixed present patterns, equal to the run's model.
    model = Predictor.load(run).model.eval()
    x = torch.randn(5, 2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    x[3, 0] = x[3, 1]
    present = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1], [1, 1]], dtype=torch.float32)
    with torch.no_grad():
        ref = model(x, present.bool()).numpy()
    for out in exports.values():
        got = Predictor.load(out).backend.logits(x, present)
        assert got.shape == (5, 1) and np.abs(got - ref).max() < 1e-4


def test_exported_breast_model_from_the_cli_and_single_image_refusals(two_view_run: tuple[Path, Path],  # noqa: F811
                                                                      exports: dict[str, Path]) -> None:
    from mammolab.cli import app

    run, ds = two_view_run
    _, preds = load_evaluation(run, "test")
    row = preds[preds["views"] == "cc+mlo"].iloc[0]
    cc, mlo = ds / row["cc_path"], ds / row["mlo_path"]
    res = CliRunner().invoke(app, ["predict", str(exports["onnx"]), str(cc), str(mlo), "--file-views", "cc+mlo",
                                   "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("["):])
    assert len(payload) == 1 and abs(payload[0]["prob"] - row["prob"]) < 1e-4 and payload[0]["views"] == "cc+mlo"

    # Single-image paths refuse the exported breast model with one line, as they refuse the run.
    with pytest.raises(MammoLabError, match="give each breast's files with --file-views") as info:
        predict_files(exports["torchscript"], [cc])
    assert "\n" not in str(info.value)
    predictor = Predictor.load(exports["onnx"])
    with pytest.raises(MammoLabError, match="two-view \\(CC \\+ MLO\\) breast model; it scores a breast's CC and "
                                            "MLO images together, not single images"):
        predictor.predict_file(cc)
    with pytest.raises(MammoLabError, match="not single images"):
        predictor.predict_files([cc])
    res = CliRunner().invoke(app, ["predict", str(exports["onnx"]), str(cc)])
    assert res.exit_code != 0 and isinstance(res.exception, MammoLabError)
    assert "give each breast's files with --file-views" in str(res.exception)
    from mammolab.explain.runner import explain_run

    # explain needs the run's PyTorch model, for breast models as for single-view ones
    with pytest.raises(MammoLabError, match="not a training run \\(no config.yaml\\)") as info:
        explain_run(exports["onnx"], out_dir=exports["onnx"].parent / "explain")
    assert str(info.value).startswith(f"{exports['onnx']}: ")


def test_single_view_recipes_keep_their_bytes(tmp_path: Path) -> None:
    """The optional ``views`` field is left out of a single-view recipe: older readers and hashes see no change."""
    from mammolab.recipe import Recipe, SourceSpec, TransformSpec, load_recipe, write_recipe

    recipe = Recipe(mammolab_version="0.1.0", name="r", model="m", classes=["benign", "malignant"], num_outputs=1,
                    source=SourceSpec(stage="organize", kind="roi"),
                    transform=TransformSpec(image_size=32, resize="stretch", mean=0.5, std=0.5))
    write_recipe(tmp_path, recipe)
    assert "views" not in json.loads((tmp_path / "recipe.json").read_text()) and run_views(tmp_path) == "single"
    two = recipe.model_copy(update={"views": "cc+mlo"})
    assert two.hash() == recipe.hash()  # the views do not change how an image is made
    write_recipe(tmp_path, two)
    assert load_recipe(tmp_path).views == "cc+mlo" and run_views(tmp_path) == "cc+mlo"
