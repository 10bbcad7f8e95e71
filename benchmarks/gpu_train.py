"""Benchmark: does MammoLab's training engine keep up with a bare timm training loop on a GPU?

The same model, optimiser, batch size and in-memory tensors are trained two ways in one process:

* engine: MammoLab's :class:`~mammolab.train.module.MammoModule` (loss, metrics, per-step seeding)
  under the Lightning ``Trainer`` as ``mammolab train`` configures it (bf16 autocast, channels-last,
  optional gradient checkpointing), fed by a DataLoader over a ``TensorDataset``;
* bare: the hand-written loop of research code: ``timm.create_model``, ``torch.autocast``,
  ``loss.backward()``, ``AdamW.step()``, the same DataLoader.

Each is timed over ``--steps`` optimiser steps after ``--warmup`` steps (cuDNN autotuning, allocator),
with the GPU synchronised at both ends; it prints images/s for both, the ratio engine/bare (goal:
at least 0.9) and the peak GPU memory of each. Cases: ResNet-18 at 224, EfficientNet-B3 at 288 and
a whole-image EfficientNet-B3 at 1152x896 (height x width, configured as ``mammolab train
--image-size 1152x896`` does). ``--quick`` runs tiny versions of the three cases on the CPU in float32 (a smoke test
of the script: CPU figures say nothing about GPU throughput). Run:
``python benchmarks/gpu_train.py [--quick] [--steps 30] [--warmup 5] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("MAMMOLAB_QUIET", "1")


@dataclass
class Case:
    name: str
    arch: str
    height: int
    width: int
    batch: int
    checkpointing: bool = False


GPU_CASES = (
    Case("resnet18@224", "resnet18", 224, 224, 64),
    Case("efficientnet_b3@288", "efficientnet_b3", 288, 288, 32),
    Case("efficientnet_b3@1152x896 (whole image)", "efficientnet_b3", 1152, 896, 8, checkpointing=True),
)
QUICK_CASES = (
    Case("resnet18@32", "resnet18", 32, 32, 4),
    Case("efficientnet_b3@32", "efficientnet_b3", 32, 32, 4),
    Case("efficientnet_b3@64x48 (whole image)", "efficientnet_b3", 64, 48, 2, checkpointing=True),
)


def _loader(case: Case, steps: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    n = case.batch * steps
    x = torch.randn(n, 1, case.height, case.width, generator=g)
    y = (torch.rand(n, generator=g) < 0.5).long()
    return DataLoader(TensorDataset(x, y), batch_size=case.batch, shuffle=True, drop_last=True,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_bare(case: Case, device: torch.device, steps: int, warmup: int, bf16: bool) -> tuple[float, float | None]:
    """The research-code loop; returns (images/s, peak MB)."""
    import timm

    model = timm.create_model(case.arch, pretrained=False, in_chans=1, num_classes=1)
    if case.checkpointing:
        model.set_grad_checkpointing(True)
    model = model.to(device, memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = _loader(case, steps + warmup)
    _reset_peak(device)
    t0 = 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits[:, 0].float(), y.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * case.batch / (time.perf_counter() - t0), _peak_mb(device)


def run_engine(case: Case, device: torch.device, steps: int, warmup: int, bf16: bool) -> tuple[float, float | None]:
    """MammoLab's module under Lightning, as ``mammolab train`` sets it up; returns (images/s, peak MB)."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from mammolab.train.config import resolve_train_config
    from mammolab.train.fit import _quiet_lightning, build_model
    from mammolab.train.module import MammoModule
    from mammolab.train.scaling import apply_model_options

    cfg = resolve_train_config(overrides={
        "model": case.arch, "weights": "none", "image_size": (case.height, case.width), "batch_size": case.batch,
        "epochs": 1, "lr": 1e-4, "scheduler": "none", "precision": "bf16" if bf16 else "32", "channels_last": True,
        "grad_checkpointing": case.checkpointing, "accelerator": "gpu" if device.type == "cuda" else "cpu",
        "deterministic": False})
    model = apply_model_options(build_model(cfg, 1), cfg)
    module = MammoModule(model, cfg.model_dump(mode="json"), ["benign", "malignant"])
    times: dict[str, float] = {}

    class Clock(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup:
                _sync(device)
                times["t0"] = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            _sync(device)
            times["t1"] = time.perf_counter()

    _reset_peak(device)
    with _quiet_lightning(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*validation_step.*no `val_dataloader`.*")
        trainer = L.Trainer(max_epochs=1, accelerator=cfg.accelerator, devices=1, precision=cfg.precision,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                            callbacks=[Clock()], benchmark=device.type == "cuda")
        trainer.fit(module, train_dataloaders=_loader(case, steps + warmup))
    return steps * case.batch / (times["t1"] - times["t0"]), _peak_mb(device)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny cases on the CPU in float32 (smoke test)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; quick 1)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds, best kept (default 2; quick 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    quick = args.quick or not torch.cuda.is_available()
    if not args.quick and quick:
        print("no GPU: running the --quick CPU cases (CPU figures say nothing about GPU throughput)")
    device = torch.device("cpu" if quick else "cuda")
    steps, warmup = args.steps or (3 if quick else 30), args.warmup if args.warmup is not None else (1 if quick else 5)
    rounds = args.rounds or (1 if quick else 2)
    bf16 = not quick
    if quick:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; {'bf16 autocast' if bf16 else 'float32'}, channels-last; {steps} timed steps after "
          f"{warmup} warm-up, best of {rounds} round(s)")
    results = []
    header = f"{'case':<42} {'batch':>5} {'engine img/s':>13} {'bare img/s':>11} {'ratio':>6} {'peak MB eng/bare':>17}"
    print(header)
    for case in (QUICK_CASES if quick else GPU_CASES):
        eng, bare = [], []
        for _ in range(rounds):  # interleaved, so a slow moment hits both
            bare.append(run_bare(case, device, steps, warmup, bf16))
            eng.append(run_engine(case, device, steps, warmup, bf16))
        (e_ips, e_mb), (b_ips, b_mb) = (max(r, key=lambda t: t[0]) for r in (eng, bare))
        ratio = e_ips / b_ips
        mem = "n/a" if e_mb is None or b_mb is None else f"{e_mb:.0f}/{b_mb:.0f}"
        print(f"{case.name:<42} {case.batch:>5} {e_ips:>13.1f} {b_ips:>11.1f} {ratio:>6.2f} {mem:>17}")
        results.append({**asdict(case), "device": name, "engine_img_s": e_ips, "bare_img_s": b_ips, "ratio": ratio,
                        "engine_peak_mb": e_mb, "bare_peak_mb": b_mb, "bf16": bf16, "steps": steps})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
