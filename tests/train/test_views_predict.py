"""Two-view runs outside evaluation: breast-level ``predict`` agrees with ``evaluate``, and ``explain``
draws breasts (chosen files are refused with one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_views import two_view_ds  # noqa: F401  (the module-scoped dataset fixture)
from typer.testing import CliRunner

from mammolab.errors import MammoLabError
from mammolab.evaluate.breast import predict_breast_files
from mammolab.evaluate.evaluation import evaluate_run, load_evaluation
from mammolab.evaluate.predict import predict_files
from mammolab.train.config import resolve_train_config
from mammolab.train.fit import train


@pytest.fixture(scope="module")
def two_view_run(two_view_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # noqa: F811
    """A tiny attention-fusion two-view run, evaluated on test (one row per breast)."""
    cfg = resolve_train_config(overrides={
        "model": "mammoresnet", "views": "cc+mlo", "fusion": "attention", "image_size": 32, "batch_size": 8,
        "epochs": 2, "lr": 0.01, "patience": 0, "accelerator": "cpu", "weights": "none"})
    run = train(two_view_ds, cfg, tmp_path_factory.mktemp("twoview") / "run").run_dir
    evaluate_run(run, "test", n_boot=50)
    return run, two_view_ds


def test_breast_predict_gives_the_evaluation_probability(two_view_run: tuple[Path, Path]) -> None:
    run, ds = two_view_run
    _, preds = load_evaluation(run, "test")
    both = preds[preds["views"] == "cc+mlo"]
    one = preds[preds["views"] == "cc"]
    assert len(both) >= 2 and len(one) == 1  # the fixture dropped one test MLO
    files = [ds / p for _, r in both.iterrows() for p in (r["cc_path"], r["mlo_path"])]
    results = predict_breast_files(run, files, "cc+mlo")
    assert len(results) == len(both) and not any("error" in r for r in results)
    for res, (_, row) in zip(results, both.iterrows(), strict=True):
        assert abs(res["prob"] - row["prob"]) < 1e-4, (res["path"], res["prob"], row["prob"])
        assert res["views"] == "cc+mlo" and res["missing_view"] is None
        assert res["cc"] == str(ds / row["cc_path"]) and res["mlo"] == str(ds / row["mlo_path"])
        assert res["class"] == ("malignant" if res["prob"] >= res["threshold"] else "benign")
        assert res["probs"]["malignant"] == pytest.approx(res["prob"]) and res["warnings"] == []
    assert max(r["prob"] for r in results) - min(r["prob"] for r in results) > 1e-3  # not one constant output

    # A breast filmed in CC only: predicted as evaluation predicts it, the missing view named.
    (single,) = predict_breast_files(run, [ds / one.iloc[0]["cc_path"]], "cc")
    assert abs(single["prob"] - one.iloc[0]["prob"]) < 1e-4
    assert single["missing_view"] == "MLO" and single["views"] == "cc" and single["mlo"] is None
    assert any("no MLO view" in w for w in single["warnings"])

    # The CLI: one JSON result per breast; a bad file is that breast's error, exit code 1.
    from mammolab.cli import app

    first = both.iloc[0]
    res = CliRunner().invoke(app, ["predict", str(run), str(ds / first["cc_path"]), str(ds / first["mlo_path"]),
                                   str(ds / "missing.png"), str(ds / first["mlo_path"]), "--file-views", "cc+mlo",
                                   "--json"])
    assert res.exit_code == 1, res.output
    payload = json.loads(res.stdout[res.stdout.index("["):])
    assert abs(payload[0]["prob"] - first["prob"]) < 1e-4 and "missing.png" in payload[1]["error"]


def test_breast_predict_errors(two_view_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, ds = two_view_run
    any_png = next(ds.rglob("*.png"))
    with pytest.raises(MammoLabError, match="give each breast's files with --file-views"):
        predict_files(run, [any_png])
    with pytest.raises(MammoLabError, match="do not split into breasts of 2"):
        predict_breast_files(run, [any_png] * 3, "cc+mlo")
    with pytest.raises(MammoLabError, match="--file-views: expected one of cc\\+mlo, cc, mlo"):
        predict_breast_files(run, [any_png], "cc+ml")
    single = tmp_path / "single"  # a run folder whose config says single view: --views is refused cheaply
    single.mkdir()
    cfg = (run / "config.yaml").read_text().replace("views: cc+mlo", "views: single")
    assert "views: single" in cfg
    (single / "config.yaml").write_text(cfg)
    with pytest.raises(MammoLabError, match="single-view model; predict its files without --file-views"):
        predict_breast_files(single, [any_png], "cc")


def test_explain_of_two_view_runs_draws_breasts(two_view_run: tuple[Path, Path], tmp_path: Path) -> None:
    """explain draws one figure per breast (tests/train/test_views_explain.py); chosen files go through
    predict --views --heatmap instead, said in one line."""
    from mammolab.explain.runner import explain_run

    run, ds = two_view_run
    with pytest.raises(MammoLabError) as info:
        explain_run(run, [next(ds.rglob("*.png"))], out_dir=tmp_path / "explain")
    msg = str(info.value)
    assert msg.startswith(f"explain: {run} is a two-view (CC + MLO) breast model") and "\n" not in msg
    assert "--file-views cc+mlo --heatmap DIR" in msg
    assert not (tmp_path / "explain").exists()
    s = explain_run(run, out_dir=tmp_path / "explain", method="occlusion", grid=2, limit=1)
    assert s["n_breasts"] == 1 and len(list((tmp_path / "explain" / "overlays").glob("*.png"))) == 1


def test_two_view_recipe_threshold_is_the_evaluation_threshold(two_view_run: tuple[Path, Path]) -> None:
    """evaluate records a two-view run's validation-chosen (Youden) threshold in its recipe, so predict and
    serve decide breasts at the threshold the report uses (it stayed 0.5 before)."""
    from mammolab.evaluate.evaluation import eval_dir
    from mammolab.recipe import load_recipe

    run, ds = two_view_run
    metrics = json.loads((eval_dir(run, "test") / "metrics.json").read_text())
    youden = metrics["operating_points"]["youden"]
    assert youden["source"] == "val"
    recipe = load_recipe(run)
    assert recipe.threshold == pytest.approx(min(1.0, max(0.0, youden["threshold"])))
    assert "breasts" in recipe.threshold_source
    _, preds = load_evaluation(run, "test")
    row = preds[preds["views"] == "cc+mlo"].iloc[0]
    (res,) = predict_breast_files(run, [ds / row["cc_path"], ds / row["mlo_path"]], "cc+mlo")
    assert res["threshold"] == pytest.approx(recipe.threshold)
