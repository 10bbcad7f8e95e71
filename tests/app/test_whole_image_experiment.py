"""experiments/cbis_whole_image.yaml: the whole-image study file validates and plans its six runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammolab.app.experiment import load_experiment, resolved_runs
from mammolab.app.run import run_experiment

REPO = Path(__file__).resolve().parents[2]
FILE = REPO / "experiments" / "cbis_whole_image.yaml"


def test_whole_image_dry_run_plans_single_two_view_and_transfer(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_experiment(FILE, dry_run=True)
    names = [f"{m}_{k}" for m in ("efficientnet_b3", "resnet50") for k in ("single", "two_view", "transfer")]
    assert list(result.statuses("train")) == names
    assert set(result.statuses("train").values()) == {"planned"} and not any(tmp_path.iterdir())
    assert result.problems and all("is missing" in p for p in result.problems)  # placeholder data paths
    runs = dict(resolved_runs(load_experiment(FILE)))
    for m in ("efficientnet_b3", "resnet50"):
        single, two, transfer = runs[f"{m}_single"], runs[f"{m}_two_view"], runs[f"{m}_transfer"]
        assert single.image_size == (1152, 896) and single.precision == "bf16-mixed" and single.channels_last
        assert single.views == "single" and two.views == "cc+mlo" and two.effective_batch == 16
        assert transfer.init_from == f"runs/patch/{m}" and transfer.head_type == "allconv"
        assert transfer.weights == "none" and transfer.model == m
