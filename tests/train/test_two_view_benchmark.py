"""benchmarks/two_view_transfer.py --quick: the two-view and transfer comparison runs end to end, re-runs skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_quick_benchmark_compares_both_claims_and_reruns_from_its_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], load_benchmark) -> None:
    mod = load_benchmark("two_view_transfer")
    out = tmp_path / "work"
    results = mod.main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    two, tr, cal = results["two_view"], results["transfer"], results["calibration"]
    assert cal["n_images"] >= 2 * two["n_breasts"] and set(cal["auc"]) == {"ideal reader (the drawn look)",
                                                                           "single-view model"}
    assert two["n_breasts"] > 0 and two["pairing"] and 0 < two["n_malignant"] < two["n_breasts"]
    assert set(two["auc"]) == {"ideal reader, CC look", "ideal reader, CC+MLO looks averaged",
                               "one view (single-view model, CC image)", "single-view model, CC+MLO averaged",
                               "two-view model (cc+mlo, concat fusion)"}
    for block in (cal, two, tr):
        for r in block["auc"].values():
            assert 0.0 <= r["ci_low"] <= r["auc"] <= r["ci_high"] <= 1.0
        for d in block.get("delong", {}).values():
            assert 0.0 <= d["p"] <= 1.0 and d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert tr["n_films"] >= two["n_breasts"]
    assert set(tr["auc"]) >= {"from scratch", "from the patch model (--init-from)"}
    assert set(tr["patch_model_on_films"]) == {"centred", "slid"}
    assert all(0.0 <= v <= 1.0 for v in tr["patch_model_on_films"].values())
    assert f"{tr['patch_model_on_films']['slid']:.3f} slid over the film" in printed
    assert mod.p_text(two['delong']['two-view - one view']['p']) in printed
    assert mod.p_text(tr['delong']['transfer - scratch']['p']) in printed
    assert mod.p_text(0.01234) == "p = 0.0123" and mod.p_text(3e-9) == "p < 0.0001"
    assert json.loads((out / "results.json").read_text())["two_view"] == json.loads(json.dumps(two))
    runs = sorted(p.name for p in (out / "runs").iterdir())  # named by the settings that shape them
    shen_run = "patch_shen_mammoresnet_64h_32px_bg4_1ep"
    assert runs == [shen_run, "patch_single_mammoresnet_32px_1ep", "patch_two_view_mammoresnet_32px_1ep",
                    "whole_scratch_mammoresnet_64x40_1ep_lr0.0003",
                    f"whole_transfer_mammoresnet_64x40_1ep_lr0.0003_from_{shen_run}"]
    # the transfer run says where its backbone came from
    assert f"init_from: {out / 'runs' / shen_run}" in (out / "runs" / runs[-1] / "config.yaml").read_text()
    shen = json.loads((out / "roi_shen_64h_32px_bg4" / "mammolab.json").read_text())
    assert shen["classes"] == ["normal", "benign", "malignant"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.ckpt")}
    again = mod.main(["--quick", "--out", str(out)])  # every step finished: skipped, same figures
    assert again["two_view"] == results["two_view"] and again["transfer"] == results["transfer"]
    assert stamps and {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.ckpt")} == stamps
