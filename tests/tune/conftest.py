"""Fixtures for the tuning tests: a tiny learnable lesion-patch dataset and the PostgreSQL URL."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammolab.data.manifest import write_info, write_manifest
from mammolab.data.synth import make_lesion_patch
from mammolab.io import write_png

PG_URL = os.environ.get("MAMMOLAB_TEST_PG_URL", "postgresql://mammolab:mammolab@localhost:5432/mammolab")

SPLIT_SIZES = {"train": 24, "val": 12, "test": 8}


@pytest.fixture(scope="session")
def patch_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 44-image binary dataset of 64 px lesion patches (balanced per split, one patient per image)."""
    root = tmp_path_factory.mktemp("tune-data") / "patches"
    rng = np.random.default_rng(7)
    rows = []
    for split, n in SPLIT_SIZES.items():
        for i in range(n):
            malignant = i % 2 == 1
            label = "malignant" if malignant else "benign"
            img, box = make_lesion_patch(64, malignant, rng)
            rel = f"{split}/{label}/{split}_{i:03d}.png"
            (root / split / label).mkdir(parents=True, exist_ok=True)
            write_png(root / rel, img)
            rows.append({"path": rel, "split": split, "label": label, "patient_id": f"P_{split}_{i:03d}",
                         "abnormality": "mass", "width": 64, "height": 64, "bbox_x0": box[0], "bbox_y0": box[1],
                         "bbox_x1": box[2], "bbox_y1": box[3], "target": int(malignant)})
    write_manifest(pd.DataFrame(rows), root)
    write_info(root, {"stage": "test-fixture", "classes": ["benign", "malignant"], "labels": "binary"})
    return root


def pg_reachable(url: str) -> str | None:
    """None when a PostgreSQL server accepts ``url``; otherwise the reason (tests skip with it)."""
    try:
        import sqlalchemy

        from mammolab.tune.storage import resolve_driver

        engine = sqlalchemy.create_engine(resolve_driver(url), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means "no server here": skip, never fail
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test PostgreSQL URL (MAMMOLAB_TEST_PG_URL); skips when no server accepts it."""
    reason = pg_reachable(PG_URL)
    if reason is not None:
        pytest.skip(f"no PostgreSQL at {PG_URL.split('@')[-1]} ({reason}); run scripts/ci_postgres.sh")
    return PG_URL
