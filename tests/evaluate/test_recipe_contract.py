"""The predict = evaluate contract on generated data: a run's recipe takes a source DICOM, its organized PNG
and the image evaluation read to the same probability; the run works alone; exports match; external validation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from recipe_fixtures import KindRun, first_rows, make_kind_run
from typer.testing import CliRunner

from mammolab.errors import MammoLabError
from mammolab.evaluate.evaluation import eval_dir, evaluate_run, external_dir, load_evaluation
from mammolab.explain.predicted import heatmapper
from mammolab.infer import Predictor
from mammolab.recipe import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    from mammolab.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), patients=20, image_size=256, layout="legacy", seed=0,
                      workers=1)


@pytest.fixture(scope="module")
def kinds(synth, tmp_path_factory: pytest.TempPathFactory) -> dict[str, KindRun]:
    import os

    root = tmp_path_factory.mktemp("kinds")
    os.environ["MAMMOLAB_CACHE"] = str(root / "cache")
    return {
        "crop": make_kind_run(synth, root, "crop", pp_size=(48, 48), preset="patch"),
        "full": make_kind_run(synth, root, "full", pp_size=(96, 64), preset="full"),
        "roi": make_kind_run(synth, root, "roi", pp_size=(48, 48), preset="patch"),
    }


def _evaluated(kr: KindRun) -> pd.DataFrame:
    _, preds = load_evaluation(kr.run)
    return preds


@pytest.mark.parametrize("kind", ["crop", "full"])
def test_predict_organized_png_and_source_dicom_match_evaluate(kinds, kind: str) -> None:
    kr = kinds[kind]
    preds = _evaluated(kr)
    assert len(preds) >= 4
    p = Predictor.load(kr.run)
    pngs = [kr.organized / path for path in preds["path"]]
    dicoms = [kr.sources[i][0] for i in preds["image_id"]]
    assert all(d.suffix == ".dcm" for d in dicoms)
    from_png = p.predict_files(pngs)
    from_dcm = p.predict_files(dicoms)
    expected = preds["prob"].to_numpy()
    assert not any("error" in r for r in from_png + from_dcm)
    np.testing.assert_allclose([r["prob"] for r in from_png], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose([r["prob"] for r in from_dcm], expected, atol=1e-4, rtol=0)
    # An image of the run's own preprocessed dataset is known to be preprocessed: not preprocessed twice.
    from_pp = p.predict_files([kr.preprocessed / path for path in preds["path"]])
    np.testing.assert_allclose([r["prob"] for r in from_pp], expected, atol=1e-4, rtol=0)
    # The preprocessing really is part of the path: the organized image fed as if preprocessed differs.
    from mammolab.io import read_image

    image = read_image(pngs[0])
    skipped = p.prepare(image, start="preprocessed").tensor
    assert float(np.abs(skipped - p.prepare(image).tensor).max()) > 0.05
    assert np.ptp(expected) > 1e-3  # the probabilities vary well beyond the tolerance
    assert all(r["warnings"] == [] for r in from_png)


def test_recipe_records_the_chain(kinds) -> None:
    r = load_recipe(kinds["roi"].run)
    assert r.source.kind == "roi" and r.source.roi_size == 64 and r.source.bit_depth == 16
    assert [name for st in r.preprocess for s in st.steps for name in s] == ["resize", "denoise", "clahe"]
    assert r.transform.image_size == 32 and r.classes == ["benign", "malignant"] and r.complete
    full = load_recipe(kinds["full"].run)
    assert [name for s in full.steps() for name in s][:2] == ["crop_border", "remove_annotations"]
    # evaluate recorded the validation threshold in the recipe
    metrics, _ = load_evaluation(kinds["full"].run)
    assert full.threshold == pytest.approx(metrics["operating_points"]["youden"]["threshold"])
    assert "validation" in full.threshold_source
    assert metrics["external"] is False and metrics["recipe_hash"] == full.hash()


def test_roi_whole_film_with_box_matches_evaluate(kinds) -> None:
    kr = kinds["roi"]
    preds = _evaluated(kr)
    p = Predictor.load(kr.run)
    for i in first_rows(preds, 4):
        film, box = kr.sources[preds["image_id"].iloc[i]]
        res = p.predict_file(film, box=box)
        assert res["prob"] == pytest.approx(preds["prob"].iloc[i], abs=1e-4)
        assert res["warnings"] == []
        patch = p.predict_file(kr.organized / preds["path"].iloc[i])
        assert patch["prob"] == pytest.approx(preds["prob"].iloc[i], abs=1e-4)
    film, box = kr.sources[preds["image_id"].iloc[0]]
    whole = p.predict_file(film)  # a whole film without --box: predicted, with a warning
    assert whole["warnings"] and "--box" in whole["warnings"][0]
    with pytest.raises(MammoLabError, match="--box.*outside"):
        p.predict_file(film, box=(0, 0, 5000, 5000))
    with pytest.raises(MammoLabError, match="--box: the model was trained on crop"):
        Predictor.load(kinds["crop"].run).predict_file(film, box=box)


def test_whole_film_to_a_patch_model_warns_in_json(kinds) -> None:
    from mammolab.cli import app

    kr = kinds["crop"]
    film = kinds["full"].sources[next(iter(kinds["full"].sources))][0]
    crop = kr.organized / _evaluated(kr)["path"].iloc[0]
    r = CliRunner().invoke(app, ["predict", str(kr.run), str(film), str(crop), "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout[r.stdout.index("["):])
    assert "whole film given to a patch model" in payload[0]["warning"]
    assert payload[1]["warning"] is None and 0 <= payload[1]["prob"] <= 1


def test_run_copied_elsewhere_without_its_datasets(kinds, tmp_path: Path) -> None:
    kr = kinds["crop"]
    preds = _evaluated(kr)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(kr.run, moved)
    dicoms = [kr.sources[i][0] for i in preds["image_id"]]
    hidden = [(d, d.with_name(d.name + ".hidden")) for d in (kr.organized, kr.preprocessed)]
    pngs = [tmp_path / f"{i}.png" for i in range(len(preds))]
    for src, dst in zip(preds["path"], pngs, strict=True):
        shutil.copyfile(kr.organized / src, dst)
    try:
        for d, h in hidden:
            d.rename(h)
        p = Predictor.load(moved)
        got = [r["prob"] for r in p.predict_files(dicoms + pngs)]
    finally:
        for d, h in hidden:
            h.rename(d)
    np.testing.assert_allclose(got, np.r_[preds["prob"], preds["prob"]], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(kinds, tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    from mammolab.cli import app

    kr = kinds["crop"]
    preds = _evaluated(kr)
    out = tmp_path / fmt
    r = CliRunner().invoke(app, ["export", str(kr.run), "--format", fmt, "--out", str(out)])
    assert r.exit_code == 0, r.output
    model_file = out / ("model.onnx" if fmt == "onnx" else "model.pt")
    assert model_file.is_file() and (out / "recipe.json").is_file()
    card = json.loads((out / "model_card.json").read_text())
    assert card["metrics"]["test"]["auc"]["ci_low"] is not None and card["data"]["split_sizes"]["test"] == len(preds)
    assert card["threshold"] == load_recipe(kr.run).threshold and "not a medical device" in card["notice"]
    md = (out / "model_card.md").read_text()
    assert "## Metrics" in md and "## Intended use" in md and "crop" in md
    exported = Predictor.load(out)
    assert exported.format == fmt and exported.classes == ("benign", "malignant")
    dicoms = [kr.sources[i][0] for i in preds["image_id"]]
    np.testing.assert_allclose([x["prob"] for x in exported.predict_files(dicoms)], preds["prob"], atol=1e-4, rtol=0)
    r = CliRunner().invoke(app, ["predict", str(out), str(dicoms[0]), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("["):])[0]["prob"] == pytest.approx(preds["prob"].iloc[0], abs=1e-4)
    with pytest.raises(MammoLabError, match="has no layers to hook"):
        exported.predict_file(dicoms[0], heatmap=heatmapper(exported, "gradcam"))
    occl = exported.predict_file(dicoms[0], heatmap=heatmapper(exported, "occlusion"))
    assert occl["heatmap"].ndim == 3 and occl["heatmap"].dtype == np.uint8
    r = CliRunner().invoke(app, ["export", str(kr.run), "--format", fmt, "--out", str(out)])
    assert r.exit_code != 0 and "--overwrite" in str(r.exception or r.output)


def test_external_validation(kinds, synth, tmp_path_factory: pytest.TempPathFactory) -> None:
    from mammolab.cli import app
    from mammolab.data.organize import OrganizeConfig, organize_cbis
    from mammolab.data.synth import synthesize

    kr = kinds["crop"]
    # The run's own organized dataset, scored as an external one, gives exactly the internal predictions.
    same = evaluate_run(kr.run, "test", n_boot=50, dataset=kr.organized)
    assert same == external_dir(kr.run, kr.organized, "test") and same.name == "crop-ds-test"
    _, inner = load_evaluation(kr.run)
    metrics, outer = load_evaluation(kr.run, "test", dataset=kr.organized)
    np.testing.assert_allclose(outer["prob"], inner["prob"], atol=1e-4, rtol=0)
    assert metrics["operating_points"]["youden"]["source"] == "val"  # the run's own validation threshold
    # A second generated download (another seed), organized but never preprocessed.
    other_synth = synthesize(tmp_path_factory.mktemp("other"), patients=12, image_size=256, seed=5, workers=1)
    other = other_synth.out / "hospital-b"
    organize_cbis(other_synth.download_dir, other_synth.csv_dir, other,
                  OrganizeConfig(kind="crop", allow_degenerate=True), workers=1)  # 8 patients: val has one
    r = CliRunner().invoke(app, ["evaluate", str(kr.run), "--dataset", str(other), "--split", "all",
                                 "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    assert "external dataset hospital-b" in r.output
    folder = kr.run / "eval" / "hospital-b-all"
    m = json.loads((folder / "metrics.json").read_text())
    assert m["external"] is True and m["dataset"]["name"] == "hospital-b" and m["dataset"]["manifest_hash"]
    assert m["dataset"]["start"] == "source" and m["eval_split"] == "all"
    assert m["auc"]["ci_low"] is not None and m["n"] == len(pd.read_csv(other / "manifest.csv"))
    assert all((folder / f).is_file() for f in ("predictions.csv", "roc.png", "pr.png", "calibration.png"))
    assert eval_dir(kr.run, "test") != folder
    # Re-running is skipped; an unknown split and a non-dataset are clear errors.
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    evaluate_run(kr.run, "all", n_boot=50, dataset=other)
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(MammoLabError, match="--split"):
        evaluate_run(kr.run, "holdout", dataset=other)
    with pytest.raises(MammoLabError, match="no manifest.csv"):
        evaluate_run(kr.run, "test", dataset=other_synth.download_dir)


def test_explain_outside_files_take_the_recipe(kinds, tmp_path: Path) -> None:
    """``explain RUN FILES`` on organized images (outside the run's dataset) scores what evaluate scored."""
    from mammolab.explain.runner import explain_run

    kr = kinds["full"]
    preds = _evaluated(kr)
    rows = first_rows(preds, 2)
    files = [kr.organized / preds["path"].iloc[i] for i in rows]
    summary = explain_run(kr.run, files, method="gradcam", out_dir=tmp_path / "cam")
    got = pd.read_csv(tmp_path / "cam" / "localisation.csv")
    assert len(got) == len(files) and not summary["errors"]
    np.testing.assert_allclose(got["prob_malignant"].to_numpy(), preds["prob"].to_numpy()[rows], atol=1e-4, rtol=0)
