"""``--tta`` wherever predictions are made (#24 part 3): serve and explain decide on the flip-averaged
probability when asked, as predict and evaluate do, and on the plain one otherwise.

The tiny run's model barely depends on flips (its plain and TTA probabilities differ by ~1e-6), so
the checks look at what reaches the model: serve's predictor call, explain's forward passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from helpers import post_file


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Any:
    from mammolab.evaluate.predict import Predictor

    return Predictor.load(trained_run)


def _png(trained_run: Path) -> Path:
    return sorted((trained_run.parents[1] / "dataset-pp" / "test").rglob("*.png"))[0]


class _Recording:
    """The real predictor, recording the keyword arguments of each prediction."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def predict_file(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return self.real.predict_file(*args, **kwargs)


@pytest.mark.parametrize("tta", [False, True])
def test_serve_tta_reaches_the_predictor(trained_run: Path, predictor: Any, tta: bool) -> None:
    from mammolab.app.serve import make_server

    png = _png(trained_run)
    recording = _Recording(predictor)
    srv = make_server(trained_run, port=0, predictor=recording, tta=tta).start()
    try:
        res = post_file(srv.url + "/api/predict", png.name, png.read_bytes())
    finally:
        srv.stop()
    assert [c.get("tta") for c in recording.calls] == [tta]
    expected = predictor.predict_file(png.read_bytes(), filename=png.name, tta=tta)["prob"]
    assert res["probability"] == pytest.approx(expected, abs=1e-6)


def test_explain_tta_averages_the_image_and_its_flips(trained_run: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each forward pass answers its own P(malignant) (0.2, 0.5, 0.8): the probability explain writes,
    and decides the class on, is the first alone without --tta and the mean of x, hflip(x) and vflip(x) with it."""
    import torch

    from mammolab.explain.runner import explain_run
    from mammolab.infer.backends import TorchBackend

    seen: list[torch.Tensor] = []

    def answers(self: Any, x: Any, present: Any = None) -> np.ndarray:  # the one Predictor's model call
        p = (0.2, 0.5, 0.8)[len(seen) % 3]
        seen.append(torch.as_tensor(np.array(x)))
        return np.full((len(x), 1), np.log(p / (1 - p)), dtype=np.float32)

    monkeypatch.setattr(TorchBackend, "logits", answers)
    png = _png(trained_run)
    written = {}
    for tta in (False, True):
        seen.clear()
        out = tmp_path / f"tta-{tta}"
        summary = explain_run(trained_run, [png], out_dir=out, tta=tta, target="predicted")
        assert summary["n_images"] == 1 and len(seen) == (3 if tta else 1)
        written[tta] = float(pd.read_csv(out / "localisation.csv")["prob_malignant"].iloc[0])
        assert json.loads((out / "localisation.json").read_text())["key"].get("tta", False) is tta
        if tta:
            assert torch.equal(seen[1], seen[0].flip(-1)) and torch.equal(seen[2], seen[0].flip(-2))
    assert written[False] == pytest.approx(0.2) and written[True] == pytest.approx(0.5)
