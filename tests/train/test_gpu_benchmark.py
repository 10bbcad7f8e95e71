"""benchmarks/gpu_train.py --quick: the engine-vs-bare-loop benchmark runs end to end on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_quick_benchmark_prints_both_loops_and_the_ratio(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         load_benchmark) -> None:
    mod = load_benchmark("gpu_train")
    out_json = tmp_path / "r.json"
    results = mod.main(["--quick", "--steps", "2", "--warmup", "1", "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert [r["name"] for r in results] == [c.name for c in mod.QUICK_CASES]
    for r in results:
        assert r["engine_img_s"] > 0 and r["bare_img_s"] > 0
        assert r["ratio"] == pytest.approx(r["engine_img_s"] / r["bare_img_s"])
        assert r["device"] == "CPU" and r["engine_peak_mb"] is None and not r["bf16"]
        assert f"{r['ratio']:.2f}" in printed
    assert "engine img/s" in printed and json.loads(out_json.read_text()) == results
