"""Benchmark: on ``--difficulty hard`` data, do two views beat one, and does patch-to-whole transfer beat scratch?

Everything in one process, same backbone (``resnet18`` by default), same seeds and epochs:

1. ``mammolab synth --difficulty hard``; organize it twice: lesion patches (``--kind roi``) and whole
   films (``--kind full``).
2. **Two views vs one** (on the lesion patches, so a CPU run learns something): a single-view model and
   a two-view (``--views cc+mlo``) model of the same backbone. Per test breast with both views the
   script compares the two-view probability with the single-view model's probability on the CC image
   (one view) and, for information, the mean of its CC and MLO probabilities (late fusion).
3. **Transfer vs scratch** (on whole films at ``--whole`` HxW, by default the films' own scale): the
   same whole-image model (``--transfer-model``, Shen et al.'s all-convolutional top) from scratch and
   started (``--init-from``) from a patch classifier of the same architecture trained as Shen et al.
   trained theirs: lesion patches and ``--background`` normal-tissue patches per film, all at the
   whole films' scale (``organize --roi-film-height H --roi-background N``; classes
   normal/benign/malignant); same epochs and schedule. The transfer model defaults to
   ``mammoresnet`` (the registry's small residual CNN for whole films) because whole films at their
   own scale must train on 2 CPU cores: at 320x192 it takes 19 ms per image and step there, ResNet-18
   178 ms.

Each comparison prints the test AUCs with 95% patient-bootstrap intervals and the paired DeLong test
(difference, its CI and p), next to the *ideal reader*: the AUC of the looks the generator drew the
lesions with (``mammolab.data.synth.lesion_looks``), the ceiling any model of the pixels can reach.
``--quick`` runs the whole pipeline at toy size (a smoke test, no claim). Re-running with the same
``--out`` skips the finished steps. Figures and settings go to ``OUT/results.json``. Run:
``python benchmarks/two_view_transfer.py [--patients 3200] [--epochs 8] [--whole 160x96] [--part ...] [--out DIR]``.
The README's figures: ``--patients 3200 --part two-view`` (19 min on 2 CPU cores) and
``--patients 3200 --part transfer`` (56 min). Folders are named by the settings that shape them, so one
``--out`` holds runs of several settings side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("MAMMOLAB_QUIET", "1")

from mammolab.data.organize import organize  # noqa: E402
from mammolab.data.synth import lesion_looks, synthesize  # noqa: E402
from mammolab.evaluate.metrics import bootstrap_auc_ci, delong_test  # noqa: E402
from mammolab.imagesize import as_hw, parse_image_size  # noqa: E402
from mammolab.infer import (  # noqa: E402
    load_run,
    predict_breasts,  # noqa: E402
    predict_split,
)
from mammolab.train.config import resolve_train_config  # noqa: E402
from mammolab.train.fit import train  # noqa: E402
from mammolab.train.views import pair_views  # noqa: E402

BOOTSTRAP = 2000


def _auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    ci = bootstrap_auc_ci(y, p, groups, n=BOOTSTRAP, seed=0)
    return {"auc": float(ci["auc"]), "ci_low": float(ci["ci_low"]), "ci_high": float(ci["ci_high"])}


def _auc_line(name: str, r: dict[str, float]) -> str:
    return f"  {name:<40} AUC {r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _delong(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> dict[str, float]:
    d = delong_test(y, pa, pb)
    return {k: float(d[k]) for k in ("diff", "ci_low", "ci_high", "p")}


def p_text(p: float) -> str:
    """``p = 0.0123``, or ``p < 0.0001`` (four decimals would print a p of 1e-9 as 0.0000)."""
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


def _delong_line(a: str, b: str, d: dict[str, float]) -> str:
    return f"  DeLong {a} - {b}: {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], {p_text(d['p'])}"


def _cfg(model: str, size: Any, epochs: int, batch: int, **kw: Any) -> Any:
    base = {"model": model, "weights": "none", "image_size": size, "epochs": epochs, "batch_size": batch,
            "patience": 0, "lr": 1e-3, "accelerator": "cpu", "seed": 0}
    return resolve_train_config(overrides={**base, **kw})


def _ideal(looks: pd.DataFrame, breasts: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Ideal-reader scores per breast: the CC look of its most suspicious lesion, and its CC+MLO mean."""
    by = looks.pivot_table(index=["patient_id", "side", "abn_id"], columns="view", values="look").reset_index()
    by["both"] = (by["CC"] + by["MLO"]) / 2
    best = by.groupby(["patient_id", "side"])[["CC", "both"]].max()
    keys = list(zip(breasts["patient_id"].astype(str), breasts["side"].astype(str), strict=True))
    return best.loc[keys, "CC"].to_numpy(), best.loc[keys, "both"].to_numpy()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=3200, help="generated patients (about 20%% are test)")
    ap.add_argument("--film", type=int, default=384, help="synthetic film height in pixels")
    ap.add_argument("--patch", type=int, default=64, help="ROI patch size (organize --roi-size, training size)")
    ap.add_argument("--whole", default="384x224", help="whole-film training size, HxW (films stretched to it; "
                    "the default is the films' own scale)")
    ap.add_argument("--whole-lr", type=float, default=3e-4, help="learning rate of the two whole-image models")
    ap.add_argument("--background", type=int, default=4, help="normal-tissue patches per film of the patch "
                    "model that starts the transfer (organize --roi-background)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the patch models")
    ap.add_argument("--shen-epochs", type=int, default=10, help="epochs of Shen's patch model (--transfer-model)")
    ap.add_argument("--whole-epochs", type=int, default=10, help="epochs of the two whole-image models")
    ap.add_argument("--model", default="resnet18", help="backbone of the calibration and two-view models")
    ap.add_argument("--transfer-model", default="mammoresnet", help="backbone of Shen's patch model and of the "
                    "two whole-image models (the same architecture, as --init-from requires)")
    ap.add_argument("--part", choices=["all", "two-view", "transfer"], default="all")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks the pipeline runs, claims nothing")
    args = ap.parse_args(argv)
    import torch

    if args.quick:
        args.patients, args.film, args.patch, args.whole = 24, 128, 32, "64x40"
        args.epochs = args.whole_epochs = args.shen_epochs = 1
        args.model = "mammoresnet" if args.model == "resnet18" else args.model
        args.transfer_model = "mammoresnet"
    if args.threads:
        torch.set_num_threads(args.threads)
    whole: Any = int(args.whole) if args.whole.isdigit() else args.whole
    work = args.out or Path(tempfile.mkdtemp(prefix="mammolab-2v-"))
    started = time.time()
    raw = work / "raw"
    synthesize(raw, patients=args.patients, image_size=args.film, difficulty="hard", workers=1)
    looks = pd.DataFrame(lesion_looks(args.patients, seed=0, difficulty="hard"))
    common = {"abnormality": "mass", "bit_depth": 8, "seed": 0}
    roi, full = work / f"roi_{args.patch}px", work / "full"
    if not (roi / "manifest.csv").is_file():
        organize(raw / "download", out=roi, csv_dir=raw / "csv", workers=1, kind="roi", roi_size=args.patch, **common)
    runs = work / "runs"
    batch = 8 if args.quick else 32
    tag = f"{args.model}_{args.patch}px_{args.epochs}ep"
    single = train(roi, _cfg(args.model, args.patch, args.epochs, batch), runs / f"patch_single_{tag}")
    run_single = load_run(single.run_dir)
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()},
                               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"}

    # the calibration of hard: the single-view model on every test patch, next to the ideal reader
    per_image = predict_split(run_single, "test")
    keyed = looks.set_index(["patient_id", "side", "abn_id", "view"])["look"]
    abn = per_image["image_id"].astype(str).str.rsplit("_", n=1).str[1].astype(int)
    ideal_img = keyed.loc[list(zip(per_image["patient_id"].astype(str), per_image["side"].astype(str), abn,
                                   per_image["view"].astype(str), strict=True))].to_numpy()
    yi, gi = per_image["target"].to_numpy(), per_image["patient_id"].astype(str).to_numpy()
    calib = {"ideal reader (the drawn look)": _auc(yi, ideal_img, gi),
             "single-view model": _auc(yi, per_image["prob"].to_numpy(), gi)}
    print(f"calibration of hard ({args.model}, {args.patch} px lesion patches, {args.epochs} epochs): "
          f"{len(per_image)} test patches, {len(set(gi))} patients, {int(yi.sum())} malignant")
    for name, r in calib.items():
        print(_auc_line(name, r))
    results["calibration"] = {"n_images": len(per_image), "n_patients": len(set(gi)), "n_malignant": int(yi.sum()),
                              "auc": calib}

    if args.part in ("all", "two-view"):
        two = train(roi, _cfg(args.model, args.patch, args.epochs, batch, views="cc+mlo"),
                    runs / f"patch_two_view_{tag}")
        images = predict_split(run_single, "test").set_index("path")["prob"]
        fused = predict_breasts(load_run(two.run_dir), "test").set_index("image_id")
        breasts, counts = pair_views(_test_frame(run_single), ("benign", "malignant"))
        both = breasts[breasts["views"] == "cc+mlo"].set_index("breast_id")
        y = both["target"].to_numpy()
        groups = both["patient_id"].astype(str).to_numpy()
        p_cc = images.loc[both["cc_path"]].to_numpy()
        p_late = (p_cc + images.loc[both["mlo_path"]].to_numpy()) / 2
        p_two = fused.loc[both.index, "prob"].to_numpy()
        ideal_cc, ideal_both = _ideal(looks, both)
        rows = {"ideal reader, CC look": _auc(y, ideal_cc, groups),
                "ideal reader, CC+MLO looks averaged": _auc(y, ideal_both, groups),
                "one view (single-view model, CC image)": _auc(y, p_cc, groups),
                "single-view model, CC+MLO averaged": _auc(y, p_late, groups),
                "two-view model (cc+mlo, concat fusion)": _auc(y, p_two, groups)}
        tests = {"two-view - one view": _delong(y, p_two, p_cc), "two-view - averaged": _delong(y, p_two, p_late)}
        print(f"two views vs one ({args.model}, {args.patch} px lesion patches, {args.epochs} epochs, hard): "
              f"{len(both)} test breasts with both views, {len(set(groups))} patients, {int(y.sum())} malignant")
        for name, r in rows.items():
            print(_auc_line(name, r))
        for name, d in tests.items():
            a, b = name.split(" - ")
            print(_delong_line(a, b, d))
        results["two_view"] = {"n_breasts": len(both), "n_patients": len(set(groups)), "n_malignant": int(y.sum()),
                               "pairing": {k: int(v) for k, v in counts.items()}, "auc": rows, "delong": tests}

    if args.part in ("all", "transfer"):
        if not (full / "manifest.csv").is_file():
            organize(raw / "download", out=full, csv_dir=raw / "csv", workers=1, kind="full", **common)
        # Shen et al.'s patch classifier: lesion and normal-tissue patches at the scale of the whole films
        height = as_hw(parse_image_size(whole))[0]
        shen = work / f"roi_shen_{height}h_{args.patch}px_bg{args.background}"
        if not (shen / "manifest.csv").is_file():
            organize(raw / "download", out=shen, csv_dir=raw / "csv", workers=1, kind="roi", roi_size=args.patch,
                     roi_film_height=height, roi_background=args.background, **common)
        tm = args.transfer_model
        patch = train(shen, _cfg(tm, args.patch, args.shen_epochs, batch),
                      runs / f"patch_shen_{tm}_{shen.name[9:]}_{args.shen_epochs}ep")
        wbatch = 8 if args.quick else 16
        recipe = {"resize": "stretch", "head_type": "allconv", "lr": args.whole_lr}
        wtag = f"{tm}_{args.whole}_{args.whole_epochs}ep_lr{args.whole_lr:g}"
        scratch = train(full, _cfg(tm, whole, args.whole_epochs, wbatch, **recipe), runs / f"whole_scratch_{wtag}")
        transfer = train(full, _cfg(tm, whole, args.whole_epochs, wbatch, **recipe, init_from=str(patch.run_dir)),
                         runs / f"whole_transfer_{wtag}_from_{patch.run_dir.name}")
        ps = predict_split(load_run(scratch.run_dir), "test")
        pt = predict_split(load_run(transfer.run_dir), "test").set_index("path").loc[ps["path"]]
        yf, gf = ps["target"].to_numpy(), ps["patient_id"].astype(str).to_numpy()
        films = ps.assign(view=ps["path"].str.extract(r"_(CC|MLO)\.png$", expand=False))
        per_film = looks.groupby(["patient_id", "side", "view"])["look"].max()
        ideal_film = per_film.loc[list(zip(films["patient_id"], films["side"], films["view"], strict=True))].to_numpy()
        rows = {"ideal reader (most suspicious look)": _auc(yf, ideal_film, gf),
                "from scratch": _auc(yf, ps["prob"].to_numpy(), gf),
                "from the patch model (--init-from)": _auc(yf, pt["prob"].to_numpy(), gf)}
        d = _delong(yf, pt["prob"].to_numpy(), ps["prob"].to_numpy())
        probe = _patch_model_on_films(load_run(patch.run_dir), full, ps, as_hw(parse_image_size(whole)))
        print(f"transfer vs scratch ({tm}, whole films at {args.whole}, {args.whole_epochs} epochs, "
              f"hard): {len(ps)} test films, {len(set(gf))} patients, {int(yf.sum())} malignant")
        for name, r in rows.items():
            print(_auc_line(name, r))
        print(_delong_line("transfer", "scratch", d))
        print(f"  the patch model on the test films: {probe['centred']:.3f} on windows centred on their lesions, "
              f"{probe['slid']:.3f} slid over the film (most malignant window)")
        results["transfer"] = {"n_films": len(ps), "n_patients": len(set(gf)), "n_malignant": int(yf.sum()),
                               "auc": rows, "delong": {"transfer - scratch": d}, "patch_model_on_films": probe}
    results["seconds"] = round(time.time() - started, 1)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['seconds']:.0f} s; work folder and results.json: {work}")
    return results


def _patch_model_on_films(run: Any, full: Path, films: pd.DataFrame, hw: tuple[int, int]) -> dict[str, float]:
    """AUC of the patch model's p(malignant) on the test films, at the whole-image scale (films resized to ``hw``).

    ``centred``: its highest score over windows centred on the film's lesion boxes (what it can judge
    when told where to look); ``slid``: its highest score over windows every quarter patch across the
    film (what it can find by itself). The gap says whether a whole-image model could start from it.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from mammolab.io import read_image
    from mammolab.train.imagecache import resize_image, to_unit

    model, size = run.model.eval(), as_hw(run.config.image_size)[0]
    boxes = pd.read_csv(full / "manifest.csv", dtype={"path": str}).set_index("path")["boxes"]
    step, half = max(1, size // 4), size // 2

    def score(windows: list[np.ndarray]) -> float:
        x = torch.from_numpy((np.stack(windows) - model.mean) / model.std)[:, None].float()
        with torch.no_grad():
            logits = model(x)
        probs = logits.softmax(-1)[:, -1] if logits.shape[-1] > 1 else torch.sigmoid(logits).reshape(-1)
        return float(probs.max())

    centred, slid = [], []
    for path in films["path"]:
        img = read_image(full / path)
        sy, sx = hw[0] / img.shape[0], hw[1] / img.shape[1]
        small = np.pad(to_unit(resize_image(img, hw, "stretch")), half)
        wins = []
        for x0, y0, x1, y1 in json.loads(boxes[path]):
            cx, cy = int(round((x0 + x1) / 2 * sx)) + half, int(round((y0 + y1) / 2 * sy)) + half
            wins.append(small[cy - half:cy - half + size, cx - half:cx - half + size])
        centred.append(score(wins))
        # windows inside the film (the padding only serves the centred ones near an edge)
        grid = [(y, x) for y in range(half, max(half, hw[0] + half - size) + 1, step)
                for x in range(half, max(half, hw[1] + half - size) + 1, step)]
        slid.append(score([small[y:y + size, x:x + size] for y, x in grid]))
    y = films["target"].to_numpy()
    return {"centred": float(roc_auc_score(y, centred)), "slid": float(roc_auc_score(y, slid))}


def _test_frame(run: Any) -> pd.DataFrame:
    """The test rows of a run's dataset with their targets (the frame the single-view model predicted)."""
    from mammolab.train.datamodule import MammoDataModule

    dm = MammoDataModule(run.dataset_dir, run.config, mean=run.model.mean, std=run.model.std)
    return dm.frames["test"]


if __name__ == "__main__":
    main()
