"""The comparison report: files, ordering, DeLong against the best, self-containment, headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mammolab.errors import MammoLabError
from mammolab.evaluate.evaluation import load_evaluation
from mammolab.evaluate.metrics import delong_test
from mammolab.evaluate.report import compare_runs


@pytest.fixture(scope="module")
def report(fake_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return compare_runs(fake_runs, tmp_path_factory.mktemp("report"))


def test_comparison_csv_sorted_with_cis_and_delong(report: dict[str, Path], fake_runs: list[Path]) -> None:
    table = pd.read_csv(report["csv"])
    assert list(table["run"]) == ["strong", "medium", "weak"]
    assert table["auc"].is_monotonic_decreasing
    for m in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "brier"):
        assert (table[f"{m}_ci_low"] <= table[m] + 1e-12).all() and (table[m] <= table[f"{m}_ci_high"] + 1e-12).all()
    assert table.loc[0, "params"] == 1_234_569 and table.loc[0, "epochs"] == 4
    assert pd.isna(table.loc[0, "delong_p_vs_best"])  # the best is not tested against itself
    # DeLong of "weak" vs "strong" on the paired images, recomputed directly.
    _, strong = load_evaluation(fake_runs[1])
    _, weak = load_evaluation(fake_runs[0])
    m = strong.merge(weak, on="image_id", suffixes=("_s", "_w"))
    expected = delong_test(m["target_s"], m["prob_w"], m["prob_s"])["p"]
    assert table.loc[2, "delong_p_vs_best"] == pytest.approx(expected)
    assert table.loc[2, "delong_p_vs_best"] < 0.05


def test_markdown_table(report: dict[str, Path]) -> None:
    md = report["markdown"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 4  # header + 3 runs
    assert "AUC [95% CI]" in rows[0] and "strong" in rows[1] and "best" in rows[1]
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", rows[1])
    assert (report["markdown"].parent / "roc_overlay.png").is_file()


def test_html_is_self_contained(report: dict[str, Path]) -> None:
    text = report["html"].read_text()
    assert '<table class="sortable" id="comparison">' in text
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # ROC overlay + reliability and PR overlays + 3 training-curve figures + 3 confusion matrices + 1 tuning figure
    assert len(images) == 10
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    assert "<link" not in text and "@import" not in text
    assert "optimization history" in text  # the tuning hook embeds RUN/tune/*.png
    assert "view = CC" in text  # subgroup table
    for name in ("strong", "medium", "weak"):
        assert name in text


def test_compare_errors(tmp_path: Path, fake_runs: list[Path]) -> None:
    with pytest.raises(MammoLabError, match="at least one run"):
        compare_runs([], tmp_path)
    with pytest.raises(MammoLabError, match="not found"):
        compare_runs([tmp_path / "nope"], tmp_path / "out")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(MammoLabError, match="not evaluated"):
        compare_runs([bare], tmp_path / "out", evaluate_missing=False)
    # The same run given twice is shown once.
    paths = compare_runs([fake_runs[0], fake_runs[0]], tmp_path / "one")
    assert len(pd.read_csv(paths["csv"])) == 1


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report: dict[str, Path], tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1400,2000", "--hide-scrollbars", report["html"].resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2000, 1400)
    # Not a blank page: text, table rules and figures make the pixels vary ...
    assert img.std() > 20
    # ... and the top of the page (title + table) has dark text on the white background.
    top = cv2.cvtColor(img[:400], cv2.COLOR_BGR2GRAY)
    assert (top < 100).mean() > 0.005
    # The ROC figure's coloured curves are on the page (matplotlib's C0 blue, C1 orange).
    rgb = img[..., ::-1].astype(int)
    blue = (abs(rgb[..., 0] - 31) < 30) & (abs(rgb[..., 1] - 119) < 30) & (abs(rgb[..., 2] - 180) < 30)
    assert blue.sum() > 200


def test_compare_mixes_binary_and_four_class_runs(fake_runs: list[Path], tmp_path: Path) -> None:
    from mammolab.evaluate.evaluation import eval_dir, write_evaluation

    classes = ["benign_calc", "benign_mass", "malignant_calc", "malignant_mass"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40)
    probs = rng.dirichlet(np.ones(4), 40) + np.eye(4)[y]
    probs /= probs.sum(1, keepdims=True)
    df = pd.DataFrame({"image_id": [f"i{i}" for i in range(40)], "patient_id": [f"P{i // 2}" for i in range(40)],
                       "target": y, "view": "CC"})
    for k, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, k]
    four = tmp_path / "four"
    write_evaluation(df, eval_dir(four, "test"), classes=classes, n_boot=50)
    paths = compare_runs([four, fake_runs[1]], tmp_path / "mixed")
    table = pd.read_csv(paths["csv"])
    assert list(table["run"]) == ["strong", "four"]  # binary runs first, then by AUC
    assert table.loc[1, "task"] == "multiclass" and pd.isna(table.loc[1, "delong_p_vs_best"])
    assert table.loc[1, "auc_micro"] > 0.5
    # ROC overlay + reliability and PR overlays + one training-curve figure + two confusion matrices + one tuning
    # figure
    assert paths["html"].read_text().count("data:image/png;base64,") == 7


def test_report_states_the_resamples_the_intervals_used(report: dict[str, Path]) -> None:
    from types import SimpleNamespace

    from mammolab.evaluate.report import _resamples

    # The fake runs were evaluated with 300 resamples: the report says so, not a fixed number.
    assert "percentile bootstrap, 300 resamples of patients" in report["html"].read_text()
    assert "patient-level bootstrap (300 resamples)" in report["markdown"].read_text()
    runs = [SimpleNamespace(metrics={"auc": {"n_boot": n}}) for n in (500, 2000, 500)]
    assert _resamples(runs) == "500-2000 resamples, by run"
    assert _resamples([SimpleNamespace(metrics={})]) == "resamples"


def test_order_does_not_depend_on_the_order_given(fake_runs: list[Path], tmp_path: Path) -> None:
    # The same runs given in reverse give the same table.
    a = pd.read_csv(compare_runs(fake_runs, tmp_path / "a")["csv"])["run"].tolist()
    b = pd.read_csv(compare_runs(list(reversed(fake_runs)), tmp_path / "b")["csv"])["run"].tolist()
    assert a == b
