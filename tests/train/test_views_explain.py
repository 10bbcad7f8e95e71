"""``mammolab explain`` of a two-view (CC + MLO) run: one figure per breast (CC and MLO overlays side by side),
localisation per view against the manifest's boxes, the run's breast probabilities, re-runs skipped, errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pandas as pd
import pytest
from train_fixtures import make_lesion_dataset
from typer.testing import CliRunner

from mammolab.data.manifest import load_manifest, write_manifest
from mammolab.errors import MammoLabError
from mammolab.evaluate.evaluation import evaluate_run, load_evaluation
from mammolab.explain.runner import explain_run
from mammolab.train.config import resolve_train_config
from mammolab.train.fit import train

BOX = (8.0, 8.0, 24.0, 24.0)  # the generated lesions sit within 3 px of the centre of 32 px images


@pytest.fixture(scope="module")
def boxed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny concat-fusion two-view run on lesions with boxes; one test breast without its MLO view."""
    ds = make_lesion_dataset(tmp_path_factory.mktemp("views-boxed") / "ds", patients=24, size=32, seed=5)
    df = load_manifest(ds)
    for col, v in zip(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"), BOX, strict=True):
        df[col] = v
    drop = df.index[(df["split"] == "test") & (df["view"] == "MLO")][0]
    write_manifest(df.drop(index=drop), ds)
    cfg = resolve_train_config(overrides={
        "model": "mammoresnet", "views": "cc+mlo", "fusion": "concat", "image_size": 32, "batch_size": 8,
        "epochs": 1, "patience": 0, "accelerator": "cpu", "weights": "none"})
    run = train(ds, cfg, tmp_path_factory.mktemp("twoview-explain") / "run").run_dir
    evaluate_run(run, "test", n_boot=20)
    return run, ds


def test_explain_two_view_run_writes_one_figure_per_breast(boxed_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, ds = boxed_run
    _, preds = load_evaluation(run, "test")
    out = tmp_path / "explain"
    s = explain_run(run, out_dir=out, method="gradcam")
    assert s["n_breasts"] == len(preds) and s["views"] == "cc+mlo" and s["split"] == "test"
    rows = pd.read_csv(out / "localisation.csv")
    # one row per breast and view with an image: the breast without MLO has a CC row only
    assert len(rows) == 2 * len(preds) - 1 == s["n_images"] and set(rows["view"]) == {"CC", "MLO"}
    cc_only = preds[preds["views"] == "cc"].iloc[0]
    mine = rows[(rows["patient_id"].astype(str) == str(cc_only["patient_id"])) & (rows["side"] == cc_only["side"])]
    assert mine["view"].tolist() == ["CC"]
    # the breast probability is the run's evaluation probability
    merged = rows.merge(preds.assign(patient_id=preds["patient_id"].astype(str)), on=["patient_id", "side"])
    assert len(merged) == len(rows) and (merged["prob_malignant"] - merged["prob"]).abs().max() < 1e-4
    # localisation per view against the manifest boxes
    box_area = (BOX[2] - BOX[0]) * (BOX[3] - BOX[1]) / 32 ** 2
    assert rows["has_box"].all() and (rows["box_area_fraction"] - box_area).abs().max() < 1e-9
    assert rows["energy_in_box"].dropna().between(0, 1).all() and len(rows["energy_in_box"].dropna()) > 0
    assert set(s["per_view"]) == {"CC", "MLO"} and s["per_view"]["MLO"]["n_images"] == len(preds) - 1
    # one figure per breast, both views side by side (wider than one view's panel, which is itself 2 images wide)
    figs = sorted((out / "overlays").glob("*.png"))
    assert len(figs) == len(preds) and set(rows["overlay"]) == {f"overlays/{f.name}" for f in figs}
    fig = cv2.imread(str(figs[0]))
    assert fig.shape[0] > 256 and fig.shape[1] > 4 * 256
    stored = json.loads((run / "eval" / "test" / "localisation_gradcam.json").read_text())
    assert stored["n_breasts"] == len(preds)
    # a re-run with the same key is skipped (the figures are not rewritten)
    before = figs[0].stat().st_mtime_ns
    assert explain_run(run, out_dir=out, method="gradcam")["key"] == s["key"]
    assert figs[0].stat().st_mtime_ns == before


def test_explain_two_view_occlusion_limit_cli_and_errors(boxed_run: tuple[Path, Path], tmp_path: Path) -> None:
    from mammolab.cli import app

    run, ds = boxed_run
    res = CliRunner().invoke(app, ["explain", str(run), "--method", "occlusion", "--grid", "4", "--limit", "2",
                                   "--out", str(tmp_path / "occ")])
    assert res.exit_code == 0, res.output
    assert "explain (occlusion): 2 breast(s)" in res.output
    s = json.loads((tmp_path / "occ" / "localisation.json").read_text())
    assert s["n_breasts"] == 2 and s["method"] == "occlusion"
    assert len(list((tmp_path / "occ" / "overlays").glob("*.png"))) == 2
    labels = pd.read_csv(tmp_path / "occ" / "localisation.csv").drop_duplicates(["patient_id", "side"])["label"]
    assert sorted(labels) == ["benign", "malignant"]  # classes interleaved
    any_png = next(ds.rglob("*.png"))
    with pytest.raises(MammoLabError, match="explain works on its --split") as info:
        explain_run(run, [any_png], out_dir=tmp_path / "files")
    assert "--file-views cc+mlo --heatmap DIR" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MammoLabError, match="--layer: MammoNet has no module named 'layer9'"):
        explain_run(run, out_dir=tmp_path / "bad-layer", layer="layer9", force=True)


def test_predict_views_heatmap_writes_breast_figures(boxed_run: tuple[Path, Path], tmp_path: Path) -> None:
    from mammolab.cli import app
    from mammolab.evaluate.breast import predict_breast_files

    run, ds = boxed_run
    _, preds = load_evaluation(run, "test")
    both = preds[preds["views"] == "cc+mlo"].iloc[0]
    one = preds[preds["views"] == "cc"].iloc[0]
    cc, mlo, lone = ds / both["cc_path"], ds / both["mlo_path"], ds / one["cc_path"]
    res = CliRunner().invoke(app, ["predict", str(run), str(cc), str(mlo), "--file-views", "cc+mlo", "--heatmap",
                                   str(tmp_path / "maps"), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("["):])
    assert abs(payload[0]["prob"] - both["prob"]) < 1e-4
    fig = Path(payload[0]["heatmap"])
    assert fig == tmp_path / "maps" / f"{cc.stem}+{mlo.stem}_gradcam.png" and fig.is_file()
    single = predict_breast_files(run, [lone], "cc", heatmap_dir=tmp_path / "maps", method="occlusion")[0]
    assert single["missing_view"] == "MLO" and Path(single["heatmap"]).name == f"{lone.stem}_occlusion.png"
    two, lonely = cv2.imread(str(fig)), cv2.imread(single["heatmap"])
    assert lonely.shape[1] < two.shape[1]  # the missing MLO view is a narrow "no MLO view" tile, not a map
    # the breast's gradcam figure changes when its MLO lesion is blanked out (the MLO map follows the MLO image)
    blank = cv2.imread(str(mlo), cv2.IMREAD_UNCHANGED)
    blank[8:24, 8:24] = int(blank.mean())
    cv2.imwrite(str(tmp_path / "mlo_blank.png"), blank)
    other = predict_breast_files(run, [cc, tmp_path / "mlo_blank.png"], heatmap_dir=tmp_path / "maps2")[0]
    assert not (cv2.imread(other["heatmap"]).shape == two.shape and (cv2.imread(other["heatmap"]) == two).all())
    with pytest.raises(MammoLabError, match="--method: expected one of"):
        predict_breast_files(run, [cc, mlo], heatmap_dir=tmp_path / "maps3", method="lime")


def test_predict_heatmap_of_an_exported_breast_model(boxed_run: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from mammolab.evaluate.breast import predict_breast_files
    from mammolab.evaluate.export import export_run

    run, ds = boxed_run
    _, preds = load_evaluation(run, "test")
    both = preds[preds["views"] == "cc+mlo"].iloc[0]
    files = [ds / both["cc_path"], ds / both["mlo_path"]]
    onnx = export_run(run, tmp_path / "onnx", "onnx").out
    from_run = predict_breast_files(run, files, heatmap_dir=tmp_path / "run", method="occlusion")[0]
    exported = predict_breast_files(onnx, files, heatmap_dir=tmp_path / "onnx-maps", method="occlusion")[0]
    a, b = cv2.imread(from_run["heatmap"]).astype(int), cv2.imread(exported["heatmap"]).astype(int)
    assert a.shape == b.shape and abs(a - b).max() <= 3  # the same occlusion maps through ONNX (rounding only)
    refused = predict_breast_files(onnx, files, heatmap_dir=tmp_path / "onnx-maps", method="gradcam")[0]
    assert "has no layers to hook; use --method occlusion" in refused["error"]
