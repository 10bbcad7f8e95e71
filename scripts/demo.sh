#!/usr/bin/env bash
# The end-to-end demo on generated data, stage by stage (what `make demo` runs).
# Every stage skips finished work, so re-running after an interruption continues where it stopped.
set -euo pipefail
OUT="${1:-demo}"
BIN="${BIN:-.venv/bin}"
ML="$BIN/mammolab"

"$ML" synth "$OUT/raw" --patients 40 --image-size 1024 --seed 0
"$ML" organize "$OUT/raw/download" --csv-dir "$OUT/raw/csv" --out "$OUT/dataset" \
    --kind roi --roi-size 128 --abnormality all
echo
echo "demo dataset: $OUT/dataset (manifest: $OUT/dataset/manifest.csv, quality report: $OUT/dataset/quality_report.md)"
