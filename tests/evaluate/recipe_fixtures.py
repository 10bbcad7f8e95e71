"""Runs trained on generated CBIS-DDSM data through the real stages (synth -> organize -> preprocess -> train
-> evaluate), and the map from each organized image back to its source DICOM (importable as ``recipe_fixtures``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammolab.data.cbis import DownloadIndex, read_case_csvs
from mammolab.data.organize import OrganizeConfig, organize_cbis, plan_cbis
from mammolab.data.patches import bbox as _bbox
from mammolab.data.patches import is_binary as _is_binary
from mammolab.io import read_dicom_pixels

TRAIN = {"model": "mammoresnet", "weights": "none", "image_size": 32, "epochs": 1, "batch_size": 16,
         "accelerator": "cpu", "patience": 0, "num_workers": 0, "cache": "ram", "lr": 0.01}


@dataclass
class KindRun:
    """One kind's organized dataset, preprocessed dataset, trained and evaluated run, and source files."""

    kind: str
    organized: Path
    preprocessed: Path
    run: Path
    #: image_id -> (source DICOM, lesion box in the film for roi)
    sources: dict[str, tuple[Path, tuple[int, int, int, int] | None]]


def source_files(synth, cfg: OrganizeConfig) -> dict[str, tuple[Path, tuple[int, int, int, int] | None]]:
    """Each organized image's source DICOM, found the way organize finds it (by UID, mask told by content)."""
    index = DownloadIndex.build(synth.download_dir, metadata=synth.metadata)
    units, _ = plan_cbis(read_case_csvs(synth.csv_dir, cfg.abnormality), index, cfg)
    root = Path(synth.download_dir)
    out: dict[str, tuple[Path, tuple[int, int, int, int] | None]] = {}
    for u in units:
        if cfg.kind == "full":
            out[u.case_id] = (root / u.image_file, None)
            continue
        for a in u.abnormalities:
            arrays = {rel: read_dicom_pixels(root / rel) for rel in a.roi_files}
            crop = [rel for rel, arr in arrays.items() if not _is_binary(arr)]
            mask = [arr for arr in arrays.values() if _is_binary(arr) and arr.shape[0] == u.full_rows]
            if cfg.kind == "crop" and crop:
                out[a.roi_case_id] = (root / crop[0], None)
            elif cfg.kind == "roi" and mask:
                box = _bbox(mask[0] > 0)
                out[a.roi_case_id] = (root / u.image_file, tuple(int(v) for v in box))
    return out


def make_kind_run(synth, root: Path, kind: str, *, pp_size: tuple[int, int], preset: str,
                  evaluate: bool = True) -> KindRun:
    from mammolab.evaluate.evaluation import evaluate_run
    from mammolab.preprocess.pipeline import preprocess
    from mammolab.train.fit import train

    cfg = OrganizeConfig(kind=kind, roi_size=64, allow_degenerate=True)  # 12 patients: full test is all malignant
    organized = root / f"{kind}-ds"
    organize_cbis(synth.download_dir, synth.csv_dir, organized, cfg, metadata=synth.metadata, workers=1)
    pp = root / f"{kind}-pp"
    preprocess(organized, pp, preset, size=pp_size, workers=1)
    run = root / f"{kind}-run"
    train(pp, dict(TRAIN), run)
    if evaluate:
        evaluate_run(run, "test", n_boot=50)
    return KindRun(kind, organized, pp, run, source_files(synth, cfg))


def first_rows(df, n: int) -> list[int]:
    """Up to ``n`` row positions, both classes when present (so both sides of the threshold are exercised)."""
    order = np.argsort(df["target"].to_numpy(), kind="stable")
    picks = list(order[:n // 2]) + list(order[::-1][:n - n // 2])
    return sorted(set(int(i) for i in picks))
