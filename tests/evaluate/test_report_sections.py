"""The report's sections: each checked for its content, against a direct computation where there is one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from evaluate_fixtures import CLASSES, make_box_dataset, make_fake_run, synthetic_predictions
from sklearn.metrics import roc_curve

from mammolab.errors import MammoLabError
from mammolab.evaluate.evaluation import eval_dir, load_evaluation, write_evaluation
from mammolab.evaluate.metrics import fixed_rate_operating_points
from mammolab.evaluate.report import compare_runs
from mammolab.evaluate.report_sections import gallery


def _section(text: str, section_id: str) -> str:
    """The HTML from ``<h2 id=section_id>`` to the next ``<h2``."""
    start = text.index(f'<h2 id="{section_id}">')
    end = text.find("<h2", start + 5)
    return text[start:end if end > 0 else len(text)]


@pytest.fixture(scope="module")
def report(fake_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return compare_runs(fake_runs, tmp_path_factory.mktemp("report"))


# --------------------------------------------------------------------------------------------
# operating points
# --------------------------------------------------------------------------------------------
def test_fixed_rate_points_match_the_roc_curve() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.round(1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, 200)))), 2)  # rounded: ties
    groups = [f"P{i // 2}" for i in range(200)]
    res = fixed_rate_operating_points(y, p, groups, n_boot=300)
    fpr, tpr, thr = roc_curve(y, p)
    expected = [tpr[fpr <= 0.10].max(), tpr[fpr <= 0.05].max(), (1 - fpr)[tpr >= 0.90].max(),
                (1 - fpr)[tpr >= 0.95].max()]
    assert [r["value"] for r in res] == pytest.approx(expected)
    for r in res:
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["ci_high"] - r["ci_low"] > 0.01
        # The threshold reported reaches the fixed rate, read directly.
        called = p >= r["threshold"]
        sens, spec = called[y == 1].mean(), (~called[y == 0]).mean()
        got, fixed = (sens, spec) if r["metric"] == "sensitivity" else (spec, sens)
        assert got == pytest.approx(r["value"]) and fixed >= r["target"] and fixed == pytest.approx(r["other"])


def test_fixed_rate_points_errors() -> None:
    with pytest.raises(MammoLabError, match="both classes"):
        fixed_rate_operating_points([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(MammoLabError, match="between 0 and 1"):
        fixed_rate_operating_points([0, 1], [0.2, 0.9], specificities=(90,))


def test_operating_points_in_table_and_section(report: dict[str, Path], fake_runs: list[Path]) -> None:
    table = pd.read_csv(report["csv"]).set_index("run")
    for run in fake_runs:
        _, preds = load_evaluation(run)
        fpr, tpr, _ = roc_curve(preds["target"], preds["prob"])
        assert table.loc[run.name, "sens_at_spec90"] == pytest.approx(tpr[fpr <= 0.10].max())
        assert table.loc[run.name, "spec_at_sens95"] == pytest.approx((1 - fpr)[tpr >= 0.95].max())
        assert table.loc[run.name, "sens_at_spec95_ci_low"] <= table.loc[run.name, "sens_at_spec95"]
    html = _section(report["html"].read_text(), "operating-points")
    strong = table.loc["strong"]
    assert f"{strong['sens_at_spec90']:.3f}" in html
    assert f"[{strong['sens_at_spec90_ci_low']:.3f}, {strong['sens_at_spec90_ci_high']:.3f}]" in html
    assert "validation-chosen threshold" in html and f"{strong['threshold']:.3f}" in html


# --------------------------------------------------------------------------------------------
# calibration, settings, data, warnings, ties
# --------------------------------------------------------------------------------------------
def test_calibration_section(report: dict[str, Path], fake_runs: list[Path]) -> None:
    html = _section(report["html"].read_text(), "calibration")
    assert html.count("data:image/png;base64,") == 2  # reliability and precision-recall overlays
    for run in fake_runs:
        m, _ = load_evaluation(run)
        assert f"{m['calibration']['ece']:.3f}" in html and f"{m['brier']['value']:.3f}" in html


def _with_config(run: Path, **cfg: object) -> None:
    import yaml

    base = {"model": "resnet18", "regime": "cft", "batch_size": 16, "augment": {"hflip": 0.5}}
    (run / "config.yaml").write_text(yaml.safe_dump({**base, **cfg}))


def test_settings_show_differences_per_run_and_shared_options_once(fake_runs: list[Path], tmp_path: Path) -> None:
    runs = [shutil.copytree(r, tmp_path / r.name) for r in fake_runs[:2]]
    _with_config(runs[0], lr=0.001)
    _with_config(runs[1], lr=0.01, augment={"hflip": 0.0})
    html = _section(compare_runs(runs, tmp_path / "rep")["html"].read_text(), "settings")
    differ = html[html.index('id="settings-differ"'):html.index("Shared by every run")]
    heads = re.findall(r"<th[^>]*>([^<]+)</th>", differ)
    assert heads == ["run", "augment.hflip", "lr"]
    assert "0.01" in differ and "0.001" in differ
    shared = html[html.index("Shared by every run"):]
    assert shared.count("<code>batch_size</code>") == 1 and "<code>lr</code>" not in shared


def test_data_section_counts_the_manifest(fake_runs: list[Path], tmp_path: Path) -> None:
    data = make_box_dataset(tmp_path / "ds")
    run = shutil.copytree(fake_runs[0], tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    info.update(dataset=str(data), manifest_hash="abc123", dataset_config_hash="cfg456")
    (run / "run.json").write_text(json.dumps(info))
    html = _section(compare_runs([run], tmp_path / "rep")["html"].read_text(), "data")
    manifest = pd.read_csv(data / "manifest.csv")
    assert "abc123" in html and "cfg456" in html and str(data) in html
    for split, sub in manifest.groupby("split"):
        row = re.search(rf"<td class=\"text\">{split}</td>((?:<td>[^<]*</td>)+)", html).group(1)
        cells = re.findall(r"<td>([^<]*)</td>", row)
        counts = sub["label"].value_counts()
        assert cells == [str(len(sub)), str(sub["patient_id"].nunique()),
                         str(counts.get("benign", 0)), str(counts.get("malignant", 0))]


def test_warnings_for_small_and_one_class_splits(tmp_path: Path) -> None:
    small = make_fake_run(tmp_path, "small", model="m", separation=1.0, seed=5, n_test=20)
    one = make_fake_run(tmp_path, "oneclass", model="m", separation=1.0, seed=6)
    val = synthetic_predictions(40, 1.0, 7, split="val")
    val = val[val["target"] == 0]  # a validation split without malignant images
    _, preds = load_evaluation(one)
    write_evaluation(preds.drop(columns=["pred_label", "pred_label_youden"]), eval_dir(one, "test"),
                     classes=CLASSES, val_df=val, n_boot=100)
    paths = compare_runs([small, one], tmp_path / "rep")
    table = pd.read_csv(paths["csv"]).set_index("run")
    assert "test split has 20 images (< 30)" in table.loc["small", "warnings"]
    assert "val split has no malignant images" in table.loc["oneclass", "warnings"]
    assert "test split" not in str(table.loc["oneclass", "warnings"])
    html = paths["html"].read_text()
    runs_table = html[html.index('id="comparison"'):html.index("</table>", html.index('id="comparison"'))]
    # small: its test split; oneclass: its val split is small (~20 images) and lacks a class
    assert runs_table.count('class="warn"') == 3
    assert "warning: test split has 20 images" in paths["markdown"].read_text()


def _perfect_run(root: Path, name: str, low: float, high: float) -> Path:
    run = root / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "m", "regime": "cft"}))
    y = np.tile([0, 1], 30)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(60)], "patient_id": [f"P{k}" for k in range(60)],
                       "target": y, "prob": np.where(y == 1, high, low)})
    write_evaluation(df, eval_dir(run, "test"), classes=CLASSES, val_df=df, n_boot=100)
    return run


def test_ties_broken_by_ci_lower_bound_then_brier(tmp_path: Path) -> None:
    # Both separate the classes perfectly (AUC 1, CI [1, 1]); "b_sharp" is far better calibrated.
    vague = _perfect_run(tmp_path, "a_vague", 0.45, 0.55)
    sharp = _perfect_run(tmp_path, "b_sharp", 0.05, 0.95)
    paths = compare_runs([vague, sharp], tmp_path / "rep")
    table = pd.read_csv(paths["csv"])
    assert list(table["run"]) == ["b_sharp", "a_vague"]
    assert table.loc[0, "auc"] == table.loc[1, "auc"] == 1.0 and table.loc[0, "brier"] < table.loc[1, "brier"]
    html = paths["html"].read_text()
    assert "ties broken by the lower bound of the AUC's 95% interval" in html and "then by the Brier score" in html
    assert re.search(r'<tr class="best"><td[^>]*>1</td><td class="text">b_sharp', html)


# --------------------------------------------------------------------------------------------
# heatmap gallery
# --------------------------------------------------------------------------------------------
def _fake_explain(run: Path) -> pd.DataFrame:
    """What ``mammolab explain`` leaves: overlays, localisation.csv and the summary copied into eval/test."""
    _, preds = load_evaluation(run)
    out = run / "explain" / "test-gradcam"
    (out / "overlays").mkdir(parents=True)
    rows = []
    for k, r in preds.iterrows():
        img = np.full((40, 90, 3), (k * 7) % 255, dtype=np.uint8)
        cv2.imwrite(str(out / "overlays" / f"{r['image_id']}.png"), img)
        rows.append({"path": r["path"], "image_id": r["image_id"], "label": r["label"],
                     "prob_malignant": r["prob"], "predicted": "x", "explained": r["label"], "has_box": True,
                     "energy_in_box": 0.5, "box_area_fraction": 0.2, "pointing_hit": bool(k % 2), "blank": False,
                     "overlay": f"overlays/{r['image_id']}.png"})
    records = pd.DataFrame(rows)
    records.to_csv(out / "localisation.csv", index=False)
    summary = {"method": "gradcam", "target": "true", "energy_in_box_mean": 0.5, "pointing_game_hit_rate": 0.5,
               "box_area_fraction_mean": 0.2, "pointing_game_n": len(rows), "overlays": str(out / "overlays")}
    (eval_dir(run, "test") / "localisation_gradcam.json").write_text(json.dumps(summary))
    return records


def test_gallery_shows_the_most_confident_cases_of_each_kind(fake_runs: list[Path], tmp_path: Path) -> None:
    run = shutil.copytree(fake_runs[0], tmp_path / "weak")  # weak: every kind occurs
    records = _fake_explain(run)
    paths = compare_runs([run], tmp_path / "rep")
    html = _section(paths["html"].read_text(), "heatmaps")
    m, _ = load_evaluation(run)
    t = m["operating_points"]["youden"]["threshold"]
    p, pos = records["prob_malignant"], records["label"] == "malignant"
    expected = {
        "tp": records[pos & (p >= t)].sort_values("prob_malignant", ascending=False)["image_id"][:2].tolist(),
        "fp": records[~pos & (p >= t)].sort_values("prob_malignant", ascending=False)["image_id"][:2].tolist(),
        "fn": records[pos & (p < t)].sort_values("prob_malignant")["image_id"][:2].tolist(),
        "tn": records[~pos & (p < t)].sort_values("prob_malignant")["image_id"][:2].tolist(),
    }
    shown = {k: re.findall(rf'<figure class="gallery" data-kind="{k}" data-image="([^"]+)"', html) for k in expected}
    assert shown == expected and sum(map(len, shown.values())) >= 4
    assert html.count("data:image/png;base64,") == sum(map(len, shown.values()))
    # Each caption says what the tile is, its probability against the threshold and its localisation.
    first_tp = records.set_index("image_id").loc[expected["tp"][0]]
    assert f"True positive #1</b>: {expected['tp'][0]}, true malignant, P(malignant) = " \
           f"{first_tp['prob_malignant']:.3f} &ge; {t:.3f}" in html
    assert "energy in box 0.50 (box 0.20 of the image)" in html


def test_gallery_says_when_a_kind_is_missing() -> None:
    records = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "label": ["malignant", "malignant", "benign", "benign"],
                            "prob_malignant": [0.9, 0.8, 0.1, 0.2]})
    g = gallery(records, 0.5, "malignant", per_kind=1)
    assert g["tp"]["image_id"].tolist() == ["a"] and g["tn"]["image_id"].tolist() == ["c"]
    assert g["fp"].empty and g["fn"].empty


# --------------------------------------------------------------------------------------------
# external validation
# --------------------------------------------------------------------------------------------
def test_external_results_have_their_own_section(fake_runs: list[Path], tmp_path: Path) -> None:
    runs = [shutil.copytree(r, tmp_path / r.name) for r in fake_runs]
    internal = {r.name: load_evaluation(r)[0]["auc"]["value"] for r in runs}
    ext = {}
    for k, run in enumerate(runs[:2]):  # a hand-made 'mammolab evaluate RUN --dataset inbreast' folder
        preds = synthetic_predictions(50, 0.3 + k, 40 + k)
        m = write_evaluation(preds, run / "eval" / "inbreast-test", classes=CLASSES, split="inbreast test",
                             n_boot=100, extra={"external": True, "eval_split": "test", "run": run.name,
                                                "dataset": {"name": "inbreast", "path": "/data/inbreast",
                                                            "manifest_hash": "feed1234"}})
        ext[run.name] = m["auc"]["value"]
    paths = compare_runs(runs, tmp_path / "rep")
    table = pd.read_csv(paths["csv"]).set_index("run")
    assert table["auc"].to_dict() == pytest.approx(internal)  # the runs table holds the internal split only
    text = paths["html"].read_text()
    section = _section(text, "external")
    assert "inbreast (test split)" in section and "/data/inbreast" in section and "feed1234" in section
    rows = re.findall(r'<tr><td class="text">([^<]+)</td><td>(\d+)</td><td>\d+</td><td>([0-9.]+)', section)
    assert {name: float(auc) for name, _, auc in rows} == pytest.approx(ext, abs=5e-4)
    assert {n for _, n, _ in rows} == {"50"}
    assert "medium" not in section  # a run without external results is not listed there
    assert text.index('id="external"') > text.index('id="comparison"')
