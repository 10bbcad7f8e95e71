"""Thin images through ``mammolab predict`` (issue #23): a grey PNG of 128x1, 1x128, 60000x1 or 2000x20
pixels gets a probability or one error line, never the 57-line ZeroDivisionError traceback of the resize.

The run is trained on a *preprocessed* dataset, so its recipe carries preprocessing steps (resize,
denoise, clahe) and predict sends the files through ``mammolab.preprocess.ops``. The ops' own
behaviour on every shape is tested in ``tests/preprocess/test_thin_images.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from fault_tools import TRAIN_ARGS, run_in_process, world_tmp

# width x height, as the issue names them
SHAPES = [(128, 1), (1, 128), (60000, 1), (2000, 20)]


@pytest.fixture(scope="module")
def pp_run(lesions: Path, world: Path) -> Path:
    """A one-epoch run on the lesion patches preprocessed with the patch preset at 32 px."""
    from mammolab.preprocess.pipeline import preprocess

    work = world_tmp(world)
    pp = preprocess(lesions, work / "pp", "patch", size=(32, 32), workers=1)
    assert pp.skipped == []
    r = run_in_process(["train", pp.out, "--out", work / "run", "--epochs", "1", *TRAIN_ARGS], tmp=work)
    assert r.returncode == 0, r.stderr
    return work / "run"


def test_predict_gives_thin_images_a_probability_without_a_traceback(pp_run: Path, tmp_path: Path) -> None:
    files = []
    for w, h in SHAPES:
        path = tmp_path / f"grey_{w}x{h}.png"
        cv2.imwrite(str(path), np.full((h, w), 128, np.uint8))
        files.append(path)
    r = run_in_process(["predict", pp_run, *files, "--json"], tmp=tmp_path)
    assert "Traceback" not in r.stderr and "ZeroDivisionError" not in r.stderr + r.stdout
    assert r.returncode == 0, r.stderr
    results = {Path(x["path"]).name: x for x in json.loads(r.stdout)}
    assert set(results) == {p.name for p in files}
    for name, res in results.items():
        assert "error" not in res, (name, res)
        assert 0.0 <= res["prob"] <= 1.0
