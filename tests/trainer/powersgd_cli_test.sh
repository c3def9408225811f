#!/usr/bin/env bash
# frugal-train --compress powersgd from the command line: --help documents its options; flags
# of other exchanges (or PowerSGD's own without it) exit 2 naming the flag; a tiny 2-rank
# Fashion-MNIST run states its exchange in the banner, learns and logs far fewer bytes per step
# than the same run dense.
# Usage: powersgd_cli_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
. "$(dirname "$0")/common.sh"
mpi=("$mpirun" --allow-run-as-root --oversubscribe -np 2)

help=$("$train" --help)
for option in powersgd-rank powersgd-min-compression-rate powersgd-start-iter print-carried-update; do
  grep -q -- "--$option" <<<"$help" || fail "--help does not document --$option"
done

p=(--compress powersgd)
expect_usage_error "--powersgd-rank: must be >= 1" "${p[@]}" --powersgd-rank 0
expect_usage_error "--powersgd-min-compression-rate: must be finite and >= 1" "${p[@]}" \
  --powersgd-min-compression-rate 0.5
for flag in powersgd-rank powersgd-min-compression-rate powersgd-start-iter; do
  expect_usage_error "--$flag applies to --compress powersgd, not topk" --compress topk --$flag 2
done
expect_usage_error "--powersgd-rank applies to --compress powersgd, not none" --powersgd-rank 2
expect_usage_error "--sync bmuf does not apply to --compress powersgd" "${p[@]}" --sync bmuf
expect_usage_error "--algorithm does not apply to --compress powersgd" "${p[@]}" --algorithm two_phase
expect_usage_error "--momentum-correction does not apply to --compress powersgd" "${p[@]}" --momentum-correction
expect_usage_error "--no-momentum-correction does not apply to --compress powersgd" "${p[@]}" --no-momentum-correction
expect_usage_error "--momentum-masking does not apply to --compress powersgd" "${p[@]}" --momentum-masking
expect_usage_error "--dense-vectors does not apply to --compress powersgd" "${p[@]}" --dense-vectors
expect_usage_error "--no-dense-vectors does not apply to --compress powersgd" "${p[@]}" --no-dense-vectors
expect_usage_error "--density-warmup-epochs does not apply to --compress powersgd" "${p[@]}" \
  --density-warmup-epochs 2
expect_usage_error "--density does not apply to --compress powersgd" "${p[@]}" --density 0.1
expect_usage_error "--bits does not apply to --compress powersgd" "${p[@]}" --bits 4
expect_usage_error "--bucket-size does not apply to --compress powersgd" "${p[@]}" --bucket-size 64
expect_usage_error "--bucket-mb does not apply to --compress powersgd" "${p[@]}" --bucket-mb 4
expect_usage_error "--error-feedback: 'maybe' is not one of on, off" "${p[@]}" --error-feedback maybe

# 16 steps per epoch, the first 4 exact.
common=(--limit-train 1024 --limit-val 512 --batch-size 64 --ref-batch 64 --base-lr 0.1
        --lr-decay step --loader-threads 1 --no-progress --seed 3)
"${mpi[@]}" "$train" "${common[@]}" --epochs 2 --compress powersgd --powersgd-rank 2 --powersgd-start-iter 4 \
    --log "$tmp/powersgd.jsonl" >"$tmp/powersgd.txt" 2>&1 ||
  { cat "$tmp/powersgd.txt"; fail "powersgd run failed"; }
grep -q "compression powersgd (rank 2, min compression rate 2.000000, exact for the first 4 steps, after backward), error feedback" \
  "$tmp/powersgd.txt" || fail "banner: $(head -1 "$tmp/powersgd.txt")"
"${mpi[@]}" "$train" "${common[@]}" --epochs 1 --log "$tmp/dense.jsonl" >"$tmp/dense.txt" 2>&1 ||
  { cat "$tmp/dense.txt"; fail "dense run failed"; }
"$python" - "$tmp/powersgd.jsonl" "$tmp/dense.jsonl" <<'PY'
import json
import sys

powersgd = [json.loads(line) for line in open(sys.argv[1])]
dense = [json.loads(line) for line in open(sys.argv[2])]
assert [r["epoch"] for r in powersgd] == [0, 1], powersgd
assert powersgd[1]["train_loss"] < powersgd[0]["train_loss"], powersgd
assert powersgd[1]["val_top1"] > 0.2, powersgd[1]  # chance: 0.1
per_step = powersgd[1]["wire_bytes"] / powersgd[1]["steps"]
assert abs(per_step - powersgd[1]["wire_bytes_per_step"]) < 1, powersgd[1]
dense_per_step = dense[0]["wire_bytes_per_step"]
assert per_step < 0.1 * dense_per_step, (per_step, dense_per_step)
print(f"powersgd r=2: {per_step:.0f} bytes/step against {dense_per_step:.0f} dense "
      f"({dense_per_step / per_step:.1f}x fewer); train loss "
      f"{powersgd[0]['train_loss']:.4f} -> {powersgd[1]['train_loss']:.4f}, "
      f"val top-1 {powersgd[1]['val_top1']:.3f}")
PY
echo "powersgd cli ok"
