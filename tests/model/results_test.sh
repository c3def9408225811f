#!/bin/bash
# The committed results of the cost model (bench/results/model/) against this build: the stored
# calibration and frugal-bench rows must still be read (a format change refuses them by name), and
# the tables regenerated from them by `bench/model/validate --tables-only` must equal the
# committed ones (a model change without regenerated tables fails here). No measuring.
# Usage: results_test.sh <repository> <frugal-model>
set -euo pipefail
repo=$1
model=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$repo"/bench/results/model/* "$work/"
FRUGAL_MODEL=$model "$repo/bench/model/validate" --tables-only --out "$work" >/dev/null
status=0
for table in validation-1gbit.md validation-100mbit.md projection.md; do
  if ! diff -u "$repo/bench/results/model/$table" "$work/$table" >"$work/diff"; then
    echo "FAIL: bench/results/model/$table is stale; run bench/model/validate --tables-only" >&2
    head -20 "$work/diff" >&2
    status=1
  fi
done
# Every table names its rows' verdicts; the fitted row is not counted as a prediction.
grep -q '| fit |$' "$work/validation-1gbit.md" || { echo "FAIL: no fitted row" >&2; status=1; }
grep -q 'predicted rows within 25% of the measurement; [0-9]* of [0-9]* between' "$work/validation-1gbit.md" ||
  { echo "FAIL: no summary line" >&2; status=1; }
exit $status
