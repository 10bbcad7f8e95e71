"""``predict`` with a pixel bomb among the files: that file's error, the others predicted, memory bounded."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from helpers import png_bomb


def test_predict_files_reports_the_bomb_and_predicts_the_rest(trained_run: Path, tmp_path: Path) -> None:
    from mammolab.evaluate.predict import predict_files

    good = sorted((trained_run.parents[1] / "dataset-pp" / "test").rglob("*.png"))[:2]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(25000, 25000))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    tracemalloc.start()
    start = time.perf_counter()
    results = predict_files(trained_run, [good[0], bomb, empty, good[1]])
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [r["path"] for r in results] == [str(good[0]), str(bomb), str(empty), str(good[1])]
    assert "error" not in results[0] and "error" not in results[3]
    assert 0.0 <= results[0]["prob"] <= 1.0 and 0.0 <= results[3]["prob"] <= 1.0
    assert str(bomb) in results[1]["error"] and "25000x25000" in results[1]["error"]
    assert "limit of 100000000 pixels" in results[1]["error"]
    assert results[2]["error"].startswith(f"{empty}: empty file")
    assert peak < 200e6 and elapsed < 30, (peak, elapsed)  # decoding the bomb alone would take 625 MB

