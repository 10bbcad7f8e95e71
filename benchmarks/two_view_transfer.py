"""Benchmark: on ``--difficulty hard`` data, do two views beat one, and does patch-to-whole transfer beat scratch?

Everything in one process, same backbone (``mammoresnet`` by default), same seeds and epochs:

1. ``mammolab synth --difficulty hard``; organize it twice: lesion patches (``--kind roi``) and whole
   films (``--kind full``).
2. **Two views vs one** (on the patches, so a tiny CPU run learns something): a single-view model
   and a two-view (``--views cc+mlo``) model. Per breast with both views the script compares the
   two-view probability with the single-view model's probability on the CC image alone (one view),
   and, for information, the mean of its CC and MLO probabilities (late fusion).
3. **Transfer vs scratch** (on whole films): the same whole-image model from scratch and started
   from the single-view patch model's backbone (``--init-from``), with the same epochs.

Each comparison prints the test AUCs with 95% patient-bootstrap intervals and the paired DeLong test
(difference, its CI and p). At the default tiny scale the intervals are wide: the script states
what was measured, not a guaranteed outcome. Run:
``python benchmarks/two_view_transfer.py [--patients 160] [--epochs 8] [--film 384] [--threads 1] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("MAMMOLAB_QUIET", "1")

from mammolab.data.organize import organize  # noqa: E402
from mammolab.data.synth import synthesize  # noqa: E402
from mammolab.evaluate.metrics import bootstrap_auc_ci, delong_test  # noqa: E402
from mammolab.train.config import resolve_train_config  # noqa: E402
from mammolab.train.fit import train  # noqa: E402
from mammolab.train.inference import load_run, predict_split  # noqa: E402
from mammolab.train.views import pair_views, predict_breasts  # noqa: E402


def _auc_line(name: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> str:
    ci = bootstrap_auc_ci(y, p, groups, n=2000, seed=0)
    return f"  {name:<34} AUC {ci['auc']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"


def _delong_line(a: str, b: str, y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> str:
    d = delong_test(y, pa, pb)
    return f"  DeLong {a} - {b}: {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], p = {d['p']:.3f}"


def _cfg(model: str, size: int, epochs: int, **kw: Any) -> Any:
    base = {"model": model, "weights": "none", "image_size": size, "epochs": epochs, "batch_size": 16,
            "patience": 0, "lr": 1e-3, "accelerator": "cpu", "seed": 0}
    return resolve_train_config(overrides={**base, **kw})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=160)
    ap.add_argument("--film", type=int, default=384, help="synthetic film height in pixels")
    ap.add_argument("--patch", type=int, default=64, help="ROI patch size (organize --roi-size, train size)")
    ap.add_argument("--whole", type=int, default=256, help="whole-film training size (square, padded)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--model", default="mammoresnet")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared machine)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = args.out or Path(tempfile.mkdtemp(prefix="mammolab-2v-"))
    raw = work / "raw"
    synthesize(raw, patients=args.patients, image_size=args.film, difficulty="hard", workers=1)
    common = {"abnormality": "mass", "bit_depth": 8, "seed": 0}
    roi = work / "roi"
    full = work / "full"
    if not (roi / "manifest.csv").is_file():
        organize(raw / "download", out=roi, csv_dir=raw / "csv", workers=1, kind="roi", roi_size=args.patch, **common)
    if not (full / "manifest.csv").is_file():
        organize(raw / "download", out=full, csv_dir=raw / "csv", workers=1, kind="full", **common)
    runs = work / "runs"
    single = train(roi, _cfg(args.model, args.patch, args.epochs), runs / "patch_single")
    two = train(roi, _cfg(args.model, args.patch, args.epochs, views="cc+mlo"), runs / "patch_two_view")
    scratch = train(full, _cfg(args.model, args.whole, args.epochs, resize="pad"), runs / "whole_scratch")
    transfer = train(full, _cfg(args.model, args.whole, args.epochs, resize="pad",
                                init_from=str(single.run_dir)), runs / "whole_transfer")

    # 2. two views vs one, per breast with both views
    run_single, run_two = load_run(single.run_dir), load_run(two.run_dir)
    images = predict_split(run_single, "test").set_index("path")["prob"]
    fused = predict_breasts(run_two, "test").set_index("image_id")
    breasts, counts = pair_views(run_single_frame(run_single), ("benign", "malignant"))
    both = breasts[breasts["views"] == "cc+mlo"].set_index("breast_id")
    y = both["target"].to_numpy()
    groups = both["patient_id"].astype(str).to_numpy()
    p_cc = images.loc[both["cc_path"]].to_numpy()
    p_late = (p_cc + images.loc[both["mlo_path"]].to_numpy()) / 2
    p_two = fused.loc[both.index, "prob"].to_numpy()
    print(f"two views vs one ({args.model}, {args.patch} px patches, {args.epochs} epochs, hard): "
          f"{len(both)} test breasts with both views, {len(set(groups))} patients, {int(y.sum())} malignant")
    for name, p in (("one view (CC image)", p_cc), ("one-view model, CC+MLO averaged", p_late),
                    ("two-view model (fusion)", p_two)):
        print(_auc_line(name, y, p, groups))
    print(_delong_line("two-view", "one view", y, p_two, p_cc))
    print(_delong_line("two-view", "averaged", y, p_two, p_late))

    # 3. transfer vs scratch, per film
    ps = predict_split(load_run(scratch.run_dir), "test")
    pt = predict_split(load_run(transfer.run_dir), "test").set_index("path").loc[ps["path"]]
    yf, gf = ps["target"].to_numpy(), ps["patient_id"].astype(str).to_numpy()
    print(f"transfer vs scratch ({args.model}, whole films at {args.whole} px, {args.epochs} epochs): "
          f"{len(ps)} test films, {len(set(gf))} patients")
    print(_auc_line("from scratch", yf, ps["prob"].to_numpy(), gf))
    print(_auc_line("from the patch model (--init-from)", yf, pt["prob"].to_numpy(), gf))
    print(_delong_line("transfer", "scratch", yf, pt["prob"].to_numpy(), ps["prob"].to_numpy()))
    print(f"work folder: {work}")
    return {"pairing": counts, "n_breasts": len(both), "n_films": len(ps)}


def run_single_frame(run: Any) -> pd.DataFrame:
    """The test rows of a run's dataset with their targets (the frame the single-view model predicted)."""
    from mammolab.train.datamodule import MammoDataModule

    dm = MammoDataModule(run.dataset_dir, run.config, mean=run.model.mean, std=run.model.std)
    return dm.frames["test"]


if __name__ == "__main__":
    main()
