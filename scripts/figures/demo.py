"""Write docs/figures/demo.json from the demo's outputs (run `make demo` first).

Reads ``demo/report/comparison.csv`` (what `mammolab compare` wrote) and the demo's ``run.log`` (the
time each stage took), and stamps the file with the machine, date and code version, so the Getting
started page quotes what this machine's demo gave.

    .venv/bin/python scripts/figures/demo.py [--demo demo]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stamp import ROOT, stamp, write_figure  # noqa: E402


def stage_seconds(run_log: Path) -> float | None:
    """Total seconds of the stages ``run.log`` says were done (skipped ones take none)."""
    if not run_log.is_file():
        return None
    total = 0.0
    for line in run_log.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 5 and parts[3] == "done" and parts[4].endswith("s"):
            total += float(parts[4][:-1])
    return round(total, 1)


def finished_at(run_log: Path) -> str | None:
    """When the demo's last stage ended (``run.log``'s last timestamp), as ``YYYY-MM-DD HH:MM UTC``."""
    if not run_log.is_file():
        return None
    lines = [line for line in run_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        return None
    import datetime as dt

    when = dt.datetime.fromisoformat(lines[-1].split("\t")[0]).astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def main() -> int:
    """Read the demo's comparison table and write the figure file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "demo", help="the demo's out folder")
    args = parser.parse_args()
    table = args.demo / "report" / "comparison.csv"
    if not table.is_file():
        print(f"{table}: not found; run `make demo` first", file=sys.stderr)
        return 2
    with table.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    runs = {}
    out_rows = []
    for r in rows:
        auc, lo, hi = float(r["auc"]), float(r["auc_ci_low"]), float(r["auc_ci_high"])
        runs[r["run"]] = {"auc": round(auc, 3), "auc_ci": [round(lo, 3), round(hi, 3)],
                          "auc_text": f"{auc:.3f} [{lo:.3f}, {hi:.3f}]", "n": int(r["n"]),
                          "brier": round(float(r["brier"]), 3), "train_time_s": float(r["train_time_s"])}
        out_rows.append([r["rank"], f"`{r['run']}`", r["model"], r["regime"], r["n"],
                         f"{auc:.3f} [{lo:.3f}, {hi:.3f}]", f"{float(r['brier']):.3f}",
                         f"{float(r['train_time_s']):.0f} s"])
    seconds = stage_seconds(args.demo / "run.log")
    notes = [f"Test split: {out_rows[0][4]} images; AUC with its 95% patient-bootstrap interval (2000 resamples)."]
    if seconds is not None:
        notes.append(f"The stages took {seconds / 60:.1f} minutes in all (run.log; the install aside).")
    measured = stamp()
    measured["date"] = finished_at(args.demo / "run.log") or measured["date"]  # when the demo ran
    data = {
        "name": "demo",
        "source": "demo/report/comparison.csv and demo/run.log, from `make demo` (experiments/demo.yaml)",
        "stamp": measured,
        "columns": ["rank", "run", "model", "regime", "test images", "test AUC [95% CI]", "Brier", "training"],
        "rows": out_rows,
        "notes": notes,
        "runs": runs,
        "stage_seconds": seconds,
    }
    print(write_figure("demo", data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
