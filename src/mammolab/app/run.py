"""``run_experiment``: the whole study of an experiment YAML in one call, resumable at any point.

Stages run in order and write under ``OUT``::

    OUT/download/          synth only: the generated CBIS-DDSM-shaped download
    OUT/dataset/           organize
    OUT/dataset-pp/        preprocess (left out when ``preprocess: null``)
    OUT/runs/<name>/       one training run per ``train.runs`` entry, with eval/ and explain/ inside
    OUT/report/            compare: report.html, comparison.csv/.md, roc_overlay.png
    OUT/run.log            one line per stage decision, appended on every invocation

A stage is skipped when its output records the same inputs (a hash of its config and of the
upstream output it read) and redone when they changed. The records are the stages' own where they
have one (a run's ``run.json`` holds its config hash and the manifest hash it trained on; an
evaluation's ``metrics.json`` holds the checkpoint stamp) and ``OUT/.mammolab/experiment.json``
otherwise, written only after a stage finished. So a crash or Ctrl-C loses at most the stage in
progress, and a killed training run resumes from its last checkpoint.

A failing training run is logged and the others go on; failures are listed at the end and make
the CLI exit non-zero.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mammolab.app.experiment import ExperimentConfig, experiment_hash, load_experiment, path_problems, resolved_runs
from mammolab.errors import MammoLabError
from mammolab.imagesize import size_text
from mammolab.io.atomic import write_json
from mammolab.progress import console

__all__ = ["STAGES", "ExperimentResult", "StageRecord", "run_experiment"]

STAGES = ("synth", "organize", "preprocess", "train", "evaluate", "explain", "compare")
STATE_FILE = Path(".mammolab") / "experiment.json"


@dataclass
class StageRecord:
    """What happened to one unit of work (a stage, or one run of a per-run stage)."""

    stage: str
    item: str
    status: str  # done | skipped | failed | planned | up to date | not run
    seconds: float = 0.0
    detail: str = ""


@dataclass
class ExperimentResult:
    """Everything a run of an experiment did, in order, plus where the report is."""

    config: ExperimentConfig
    records: list[StageRecord] = field(default_factory=list)
    report: Path | None = None
    #: Dry run: each path the real run would fail on (missing data, ``out`` a file...), one line each.
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[StageRecord]:
        return [r for r in self.records if r.status == "failed"]

    def statuses(self, stage: str) -> dict[str, str]:
        """``item -> status`` for one stage (handy in tests and notebooks)."""
        return {r.item: r.status for r in self.records if r.stage == stage}


class _Runner:
    def __init__(self, cfg: ExperimentConfig, only: str | None, dry_run: bool) -> None:
        self.cfg, self.only, self.dry_run = cfg, only, dry_run
        self.out = Path(cfg.out)
        self.result = ExperimentResult(cfg)
        self.state_path = self.out / STATE_FILE
        self.state: dict[str, str] = {}
        if self.state_path.is_file():
            try:
                self.state = dict(json.loads(self.state_path.read_text(encoding="utf-8")).get("stages", {}))
            except (json.JSONDecodeError, AttributeError):
                self.state = {}

    # ------------------------------------------------------------------ bookkeeping
    def active(self, stage: str) -> bool:
        return self.only is None or self.only == stage

    def log(self, rec: StageRecord) -> None:
        self.result.records.append(rec)
        colour = {"done": "green", "skipped": "cyan", "failed": "red", "up to date": "cyan"}.get(rec.status, "yellow")
        shown = "skip (up to date)" if rec.status == "skipped" else rec.status
        item = f" {rec.item}" if rec.item and rec.item != rec.stage else ""
        detail = f"  {rec.detail}" if rec.detail else ""
        console.print(f"[bold]{rec.stage}[/]{item}: [{colour}]{shown}[/]{detail}", highlight=False, soft_wrap=True)
        if not self.dry_run:
            self.out.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with open(self.out / "run.log", "a", encoding="utf-8") as fh:
                fh.write(f"{stamp}\t{rec.stage}\t{rec.item}\t{shown}\t{rec.seconds:.1f}s\t{rec.detail}\n")

    def remember(self, key: str, value: str) -> None:
        self.state[key] = value
        write_json(self.state_path, {"experiment": self.cfg.name, "stages": self.state})

    def step(self, stage: str, item: str, up_to_date: bool, work: Callable[[], str | None],
             missing_hint: str = "") -> bool:
        """Run ``work`` unless up to date / inactive / dry run; return whether the output is usable."""
        if not self.active(stage):
            if not up_to_date and missing_hint:
                raise MammoLabError(f"--only {self.only}: the {stage} stage's output is missing or stale "
                                    f"({missing_hint}); run without --only first")
            return up_to_date
        if up_to_date:
            self.log(StageRecord(stage, item, "up to date" if self.dry_run else "skipped"))
            return True
        if self.dry_run:
            self.log(StageRecord(stage, item, "planned"))
            return False
        t0 = time.perf_counter()
        detail = work() or ""
        self.log(StageRecord(stage, item, "done", time.perf_counter() - t0, detail))
        return True

    # ------------------------------------------------------------------ stages
    def synth(self) -> tuple[Path, Path, Path | None]:
        s = self.cfg.data.synth
        assert s is not None
        root = self.out / "download"
        download, csv_dir = root / "download", root / "csv"
        metadata = download / "metadata.csv" if s.layout == "nbia" else None
        info_path = root / "synth.json"
        up = False
        if info_path.is_file():
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
                up = bool(info.get("complete")) and all(info["args"].get(k) == v for k, v in s.args().items())
            except (json.JSONDecodeError, KeyError, AttributeError):
                up = False

        def work() -> str:
            import shutil

            from mammolab.data.synth import synthesize

            if root.exists() and not up:
                shutil.rmtree(root)  # the runner's own folder, made with other settings
            r = synthesize(root, patients=s.patients, image_size=s.image_size, layout=s.layout, seed=s.seed,
                           workers=self.cfg.workers, difficulty=s.difficulty)
            return f"{r.images} images, {r.rois} lesions -> {root}"

        self.step("synth", "synth", up, work, missing_hint=str(root))
        return download, csv_dir, metadata

    def organize(self, download: Path | None, csv_dir: Path | None, metadata: Path | None) -> Path:
        from mammolab.data import manifest as mf

        out = self.out / "dataset"
        data = self.cfg.data
        inputs = {"download": download, "csv_dir": csv_dir, "metadata": metadata, "manifest": data.manifest,
                  "synth": data.synth.args() if data.synth else None}
        key = experiment_hash({"organize": self.cfg.organize,
                               "inputs": {k: str(Path(v).resolve()) if isinstance(v, Path) else v
                                          for k, v in inputs.items()}})
        up = self.state.get("organize") == key and (out / mf.MANIFEST_NAME).is_file()
        if not self.dry_run and self.active("organize"):
            for name, p in (("data.download", download), ("data.csv_dir", csv_dir), ("data.metadata", metadata),
                            ("data.manifest", data.manifest)):
                if p is not None and data.synth is None and not Path(p).exists():
                    raise MammoLabError(f"{name}: {p} not found; edit the experiment file to point at your data")

        def work() -> str:
            from mammolab.data.organize import organize

            overwrite = (out / mf.INFO_NAME).is_file() and self.state.get("organize") not in (None, key)
            if data.manifest is not None:
                r = organize(manifest=data.manifest, out=out, config=self.cfg.organize, workers=self.cfg.workers,
                             overwrite=overwrite)
            else:
                try:
                    r = organize(download, out=out, csv_dir=csv_dir, metadata=metadata, config=self.cfg.organize,
                                 workers=self.cfg.workers, overwrite=overwrite)
                except MammoLabError as exc:
                    if "other options" not in str(exc):
                        raise
                    # A dataset from an earlier, different experiment in this runner-owned folder.
                    r = organize(download, out=out, csv_dir=csv_dir, metadata=metadata, config=self.cfg.organize,
                                 workers=self.cfg.workers, overwrite=True)
            self.remember("organize", key)
            return f"{len(r.manifest)} images -> {out}"

        self.step("organize", "organize", up, work, missing_hint=str(out))
        return out

    def preprocess(self, dataset: Path) -> Path:
        from mammolab.data import manifest as mf

        sec = self.cfg.preprocess
        if sec is None:
            return dataset
        out = self.out / "dataset-pp"
        src_hash = mf.manifest_hash(dataset) if (dataset / mf.MANIFEST_NAME).is_file() else None
        key = experiment_hash({"preprocess": sec.model_dump(mode="json"), "source": src_hash,
                               "config_file": _file_hash(sec.config)})
        up = src_hash is not None and self.state.get("preprocess") == key and (out / mf.MANIFEST_NAME).is_file()

        def work() -> str:
            from mammolab.preprocess.pipeline import preprocess

            r = preprocess(dataset, out, sec.config, workers=self.cfg.workers, size=sec.size,
                           bit_depth=sec.bit_depth)
            self.remember("preprocess", key)
            return f"{r.processed} processed, {r.reused} reused -> {out}"

        self.step("preprocess", "preprocess", up, work, missing_hint=str(out))
        return out

    def train(self, dataset: Path, name: str, tc: Any) -> Path | None:
        from mammolab.data import manifest as mf
        from mammolab.train.config import result_hash

        run_dir = self.out / "runs" / name
        info = _read_json(run_dir / "run.json")
        src_hash = mf.manifest_hash(dataset) if (dataset / mf.MANIFEST_NAME).is_file() else None
        want = result_hash(tc)
        up = (info.get("status") == "complete" and info.get("config_hash") == want
              and src_hash is not None and info.get("manifest_hash") == src_hash)
        if not self.active("train"):
            return run_dir if up else None
        if up:
            self.log(StageRecord("train", name, "up to date" if self.dry_run else "skipped",
                                 detail=_auc_text(info.get("best_val_auc"), "val AUC")))
            return run_dir
        if self.dry_run:
            self.log(StageRecord("train", name, "planned", detail=f"{tc.display_name}, {tc.epochs} epochs, "
                                 f"{size_text(tc.image_size)}px, weights {tc.weights}"))
            return None
        t0 = time.perf_counter()
        try:
            from mammolab.train.fit import train

            resume = overwrite = False
            if (run_dir / "config.yaml").is_file():
                same = _resumable(run_dir / "config.yaml", tc) and info.get("manifest_hash") in (None, src_hash)
                if same and (run_dir / "checkpoints" / "last.ckpt").is_file() and info.get("status") != "complete":
                    resume = True
                elif not same or info.get("status") == "complete":
                    overwrite = True
            r = train(dataset, tc, run_dir, resume=resume, overwrite=overwrite)
            how = "resumed, " if resume else ""
            self.log(StageRecord("train", name, "done", time.perf_counter() - t0,
                                 f"{how}{r.epochs_run} epochs, " + _auc_text(r.best_val_auc, "best val AUC")))
            return run_dir
        except Exception as exc:  # one failing run must not stop the others
            self.log(StageRecord("train", name, "failed", time.perf_counter() - t0, _one_line(exc)))
            self._write_error(run_dir, exc)
            return None

    def _write_error(self, run_dir: Path, exc: BaseException) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        (run_dir / "error.txt").write_text(text, encoding="utf-8")

    def evaluate(self, name: str, run_dir: Path) -> bool:
        from mammolab.evaluate.evaluation import eval_dir, evaluate_run

        ev = self.cfg.evaluate
        metrics = eval_dir(run_dir, ev.split, ev.tta) / "metrics.json"
        before = metrics.stat().st_mtime_ns if metrics.is_file() else None
        if not self.active("evaluate"):
            return metrics.is_file()
        if self.dry_run:
            self.log(StageRecord("evaluate", name, "planned" if before is None else "to check"))
            return False
        t0 = time.perf_counter()
        try:
            folder = evaluate_run(run_dir, ev.split, ev.tta, n_boot=ev.n_boot)
        except Exception as exc:
            self.log(StageRecord("evaluate", name, "failed", time.perf_counter() - t0, _one_line(exc)))
            return False
        after = (folder / "metrics.json").stat().st_mtime_ns
        m = _read_json(folder / "metrics.json")
        auc = _auc_text((m.get("auc") or {}).get("value"), f"{ev.split} AUC")
        status = "skipped" if before == after else "done"
        self.log(StageRecord("evaluate", name, status, time.perf_counter() - t0, auc))
        return True

    def explain(self, name: str, run_dir: Path) -> None:
        sec = self.cfg.explain
        if sec is None or not self.active("explain"):
            return
        out_dir = run_dir / "explain" / f"{sec.split}-{sec.method}"
        summary = out_dir / "localisation.json"
        before = summary.stat().st_mtime_ns if summary.is_file() else None
        if self.dry_run:
            self.log(StageRecord("explain", name, "planned" if before is None else "to check"))
            return
        t0 = time.perf_counter()
        try:
            from mammolab.explain.runner import explain_run

            explain_run(run_dir, None, split=sec.split, method=sec.method, out_dir=out_dir, target=sec.target,
                        limit=sec.n or None)
        except Exception as exc:
            self.log(StageRecord("explain", name, "failed", time.perf_counter() - t0, _one_line(exc)))
            return
        after = summary.stat().st_mtime_ns if summary.is_file() else None
        status = "skipped" if before is not None and before == after else "done"
        self.log(StageRecord("explain", name, status, time.perf_counter() - t0, f"overlays in {out_dir}"))

    def compare(self, runs: list[tuple[str, Path]]) -> Path | None:
        from mammolab.evaluate.evaluation import eval_dir

        out = self.cfg.report_dir
        split = self.cfg.evaluate.split
        stamps = []
        for name, d in runs:
            folder = eval_dir(d, split, self.cfg.evaluate.tta)
            files = sorted(folder.glob("*.json")) if folder.is_dir() else []
            stamps.append([name, [[f.name, _sha(f)] for f in files]])
        key = experiment_hash({"runs": stamps, "split": split})
        up = bool(runs) and self.state.get("compare") == key and (out / "report.html").is_file()
        if not runs:
            if self.active("compare"):
                self.log(StageRecord("compare", "compare", "not run", detail="no finished run to compare"))
            return None

        def work() -> str:
            from mammolab.evaluate.report import compare_runs

            paths = compare_runs([d for _, d in runs], out, split=split)
            self.remember("compare", key)
            return str(paths["html"])

        self.step("compare", "compare", up, work, missing_hint=str(out))
        return out / "report.html" if (out / "report.html").is_file() else None

    # ------------------------------------------------------------------ all of it
    def run(self) -> ExperimentResult:
        cfg = self.cfg
        runs = resolved_runs(cfg)
        if cfg.data.synth is not None:
            download, csv_dir, metadata = self.synth()
        else:
            download, csv_dir, metadata = cfg.data.download, cfg.data.csv_dir, cfg.data.metadata
        dataset = self.organize(download, csv_dir, metadata)
        if self.dry_run and not (dataset / "manifest.csv").is_file():
            # Nothing downstream can be judged without the dataset: list what would run.
            if cfg.preprocess is not None:
                self.log(StageRecord("preprocess", "preprocess", "planned"))
            for name, tc in runs:
                self.log(StageRecord("train", name, "planned", detail=f"{tc.display_name}, {tc.epochs} epochs, "
                                     f"{size_text(tc.image_size)}px, weights {tc.weights}"))
            self.log(StageRecord("compare", "compare", "planned", detail=str(cfg.report_dir)))
            return self.result
        train_set = self.preprocess(dataset)
        finished: list[tuple[str, Path]] = []
        for name, tc in runs:
            run_dir = self.train(train_set, name, tc)
            if run_dir is None:
                continue
            if self.evaluate(name, run_dir) or (self.dry_run and (run_dir / "run.json").is_file()):
                finished.append((name, run_dir))
                self.explain(name, run_dir)
        if self.active("compare") and self.dry_run:
            self.log(StageRecord("compare", "compare", "planned", detail=str(cfg.report_dir)))
        elif self.active("compare"):
            self.result.report = self.compare(finished)
        return self.result


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _file_hash(config: Any) -> str | None:
    """Content hash of a preprocess config file, so editing the file counts as a change."""
    if isinstance(config, str) and Path(config).is_file():
        return _sha(Path(config))
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _resumable(path: Path, tc: Any) -> bool:
    """Whether a run folder's stored config differs from ``tc`` only in what a resume may change."""
    from mammolab.config import load_yaml
    from mammolab.train.config import TrainConfig
    from mammolab.train.fit import RESUMABLE_CHANGES

    try:
        stored = TrainConfig.model_validate(load_yaml(path)).model_dump(mode="json")
    except Exception:
        return False
    new = tc.model_dump(mode="json")
    return all(stored.get(k) == v for k, v in new.items() if k not in RESUMABLE_CHANGES)


def _auc_text(value: Any, what: str) -> str:
    return f"{what} {value:.3f}" if isinstance(value, (int, float)) and value == value else ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" if not isinstance(exc, MammoLabError) else text[0]


def _summary_table(result: ExperimentResult) -> None:
    from rich.table import Table

    table = Table(title=f"experiment {result.config.name}", title_justify="left")
    for col in ("stage", "item", "status", "time", "detail"):
        table.add_column(col, overflow="fold")
    for r in result.records:
        colour = {"done": "green", "skipped": "cyan", "failed": "red"}.get(r.status, "yellow")
        shown = "skip (up to date)" if r.status == "skipped" else r.status
        table.add_row(r.stage, "" if r.item == r.stage else r.item, f"[{colour}]{shown}[/]",
                      f"{r.seconds:.1f}s" if r.seconds else "", r.detail)
    console.print(table)


def run_experiment(path_or_config: str | Path | dict[str, Any] | ExperimentConfig, only: str | None = None,
                   dry_run: bool = False, sets: dict[str, Any] | None = None) -> ExperimentResult:
    """Run (or with ``dry_run`` only validate and plan) every stage of an experiment.

    ``only`` restricts the work to one stage of :data:`STAGES`; the stages before it must already
    be up to date. ``sets`` are ``--set`` overrides (see :func:`load_experiment`). Returns the
    per-stage records and the report path; a training run that failed is in ``result.failed``,
    never an exception, so the other runs still finish. A dry run checks every path the run would
    read or write and lists what is wrong in ``result.problems`` (the CLI exits 2 then); a real run
    refuses an unusable output path in one line before any work.
    """
    if only is not None and only not in STAGES:
        raise MammoLabError(f"--only: expected one of {', '.join(STAGES)}, got {only!r}")
    cfg = load_experiment(path_or_config, sets=sets)
    if only == "synth" and cfg.data.synth is None:
        raise MammoLabError("--only synth: this experiment reads real data (no data.synth section)")
    problems = path_problems(cfg, reads=dry_run)
    if problems and not dry_run:
        raise MammoLabError("; ".join(problems))
    if dry_run:
        verdict = "config valid" if not problems else f"config read, {len(problems)} path problem(s) listed below"
        console.print(f"[bold]dry run[/] of experiment {cfg.name!r}: {verdict}; nothing is written", highlight=False)
    runner = _Runner(cfg, only, dry_run)
    result = runner.run()
    result.problems = problems
    _summary_table(result)
    for problem in problems:
        console.print(f"[red]problem[/]: {problem}", highlight=False, soft_wrap=True)
    if result.report is not None:
        console.print(f"report: [bold]{result.report}[/]", highlight=False, soft_wrap=True)
    if result.failed:
        console.print(f"[red]{len(result.failed)} item(s) failed[/]: "
                      + ", ".join(f"{r.stage} {r.item}" for r in result.failed), highlight=False)
    return result
