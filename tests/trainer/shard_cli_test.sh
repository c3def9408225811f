#!/usr/bin/env bash
# frugal-train --shard-optimizer from the command line: --help documents it; the options it does
# not combine with exit 2 naming both; a tiny 2-rank Fashion-MNIST run states the sharded
# exchange and the optimizer state per rank in the banner, logs the same optimizer_state_bytes
# (half the unsharded run's), trains the unsharded dense run's model (2 ranks: to the bit),
# learns with 1-bit too and sends fewer bytes per step with 1-bit than dense.
# Usage: shard_cli_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
. "$(dirname "$0")/common.sh"
mpi=("$mpirun" --allow-run-as-root --oversubscribe -np 2)

help=$("$train" --help)
grep -q -- "--shard-optimizer" <<<"$help" || fail "--help does not document --shard-optimizer"

expect_refused() {
  local pattern=$1
  shift
  local rc=0 msg
  msg=$("$train" --limit-train 64 --limit-val 64 --no-progress "$@" 2>&1) || rc=$?
  [[ $rc == 2 ]] || fail "$* exited $rc, expected 2 ($msg)"
  grep -q -- "--shard-optimizer: does not combine with $pattern" <<<"$msg" ||
    fail "$*: message '$msg' does not name --shard-optimizer and '$pattern'"
}
s=(--shard-optimizer)
expect_refused "--sync bmuf" "${s[@]}" --sync bmuf
expect_refused "--momentum-correction" "${s[@]}" --momentum-correction
expect_refused "--no-momentum-correction" "${s[@]}" --compress onebit --no-momentum-correction
expect_refused "--no-dense-vectors" "${s[@]}" --compress onebit --no-dense-vectors
expect_refused "--dense-vectors" "${s[@]}" --dense-vectors
expect_refused "--bucket-mb" "${s[@]}" --bucket-mb 4
expect_refused "--compress topk" "${s[@]}" --compress topk
expect_refused "--compress powersgd" "${s[@]}" --compress powersgd
expect_refused "--guardrail" "${s[@]}" --compress onebit --guardrail

common=(--limit-train 1024 --limit-val 512 --batch-size 64 --ref-batch 64 --base-lr 0.1
        --lr-decay step --loader-threads 1 --no-progress --seed 3 --epochs 1)
run() {
  local name=$1
  shift
  "${mpi[@]}" "$train" "${common[@]}" --log "$tmp/$name.jsonl" "$@" >"$tmp/$name.txt" 2>&1 ||
    { cat "$tmp/$name.txt"; fail "$name run failed"; }
}
run dense
run sharded --shard-optimizer
run onebit --shard-optimizer --compress onebit
grep -q "sharded optimizer: gradient reduce-scatter with compression onebit" "$tmp/onebit.txt" ||
  fail "banner: $(head -1 "$tmp/onebit.txt")"
banner_bytes() { sed -n 's/.*optimizer state \([0-9]*\) bytes per rank.*/\1/p' "$1" | head -1; }
dense_state=$(banner_bytes "$tmp/dense.txt")
sharded_state=$(banner_bytes "$tmp/sharded.txt")
[[ -n $dense_state && -n $sharded_state ]] || fail "no optimizer state in the banners"
grep -q "rank 0's shard of 2" "$tmp/sharded.txt" || fail "banner: $(head -1 "$tmp/sharded.txt")"
"$python" - "$tmp" "$dense_state" "$sharded_state" <<'PY'
import json
import sys

tmp, dense_state, sharded_state = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
logs = {name: [json.loads(line) for line in open(f"{tmp}/{name}.jsonl")]
        for name in ("dense", "sharded", "onebit")}
epoch = {name: [r for r in records if r["kind"] == "epoch"][-1]
         for name, records in logs.items()}
# ResNet-20's momentum, all of it unsharded, half of it (an even count) on each of 2 ranks.
assert epoch["dense"]["optimizer_state_bytes"] == dense_state, epoch["dense"]
assert epoch["sharded"]["optimizer_state_bytes"] == sharded_state, epoch["sharded"]
assert 2 * sharded_state == dense_state, (dense_state, sharded_state)
# At 2 ranks every gradient element is a + b in either exchange: the sharded dense run is the
# unsharded one to the bit, and so are its losses.
for field in ("train_loss", "val_loss", "val_top1"):
    assert epoch["sharded"][field] == epoch["dense"][field], (field, epoch)
# 16 steps learn something: below the loss of a uniform guess over 10 classes, ln 10.
for name in ("sharded", "onebit"):
    assert epoch[name]["train_loss"] < 2.302, epoch[name]
    assert epoch[name]["val_loss"] < 2.302, epoch[name]
dense_step = epoch["sharded"]["wire_bytes_per_step"]
onebit_step = epoch["onebit"]["wire_bytes_per_step"]
# The gradient's reduce-scatter shrinks ~32x, the parameters' dense allgather stays.
assert onebit_step < 0.6 * dense_step, (onebit_step, dense_step)
print(f"optimizer state per rank {dense_state} -> {sharded_state} bytes; sharded dense "
      f"{dense_step:.0f} B/step, 1-bit {onebit_step:.0f} B/step; val top-1 "
      f"{epoch['dense']['val_top1']:.3f} (unsharded) {epoch['sharded']['val_top1']:.3f} "
      f"(sharded) {epoch['onebit']['val_top1']:.3f} (1-bit)")
PY
echo "shard cli ok"
