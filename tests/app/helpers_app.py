"""Constants shared by the app tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def tiny_experiment(out: Path, *, epochs: int = 1, runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The smallest whole study: 8 generated patients, 32 px ROI patches, 1-2 tiny models."""
    return {
        "name": "tiny",
        "out": str(out),
        "data": {"synth": {"patients": 8, "film_height": 128, "seed": 3}},
        # 8 patients: the validation split holds one, so one class is missing there (allowed on purpose)
        "organize": {"kind": "roi", "roi_size": 32, "bit_depth": 8, "allow_degenerate": True},
        "preprocess": {"config": "patch", "size": [32, 32]},
        "train": {
            "defaults": {"image_size": 32, "epochs": epochs, "batch_size": 8, "patience": 0, "weights": "none",
                         "augment": {"enabled": False}},
            "runs": runs or [{"model": "mammocnn", "name": "cnn"}],
        },
        "evaluate": {"split": "test", "n_boot": 50},
        "explain": {"method": "gradcam", "n": 4},
        "workers": 1,
    }
