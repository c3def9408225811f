#!/usr/bin/env bash
# frugal-train --sync bmuf end to end: bad combinations exit 2 naming the flag; a run killed
# (SIGKILL, FRUGAL_FAULT_INJECT) while writing its epoch-2 checkpoint and resumed from epoch 1
# gives the same epoch losses as an uninterrupted run, read from the two runs' JSON logs.
# Usage: bmuf_cli_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
. "$(dirname "$0")/common.sh"
mpi=("$mpirun" --allow-run-as-root --oversubscribe -np 2)

# Bad combinations: exit 2 with a message naming the flag (before any MPI or data work).
expect_usage_error "--sync: expected sync, bmuf or async-ps, got 'async'" --sync async
expect_usage_error "--block-steps needs --sync bmuf" --block-steps 4
expect_usage_error "--block-momentum needs --sync bmuf" --sync sync --block-momentum 0.5
expect_usage_error "--block-lr needs --sync bmuf" --block-lr 2
expect_usage_error "--nesterov-bmuf needs --sync bmuf" --nesterov-bmuf
expect_usage_error "--block-steps: must be >= 1" --sync bmuf --block-steps 0
expect_usage_error "--block-momentum: must be in \[0, 1)" --sync bmuf --block-momentum 1
expect_usage_error "--block-momentum: must be in \[0, 1)" --sync bmuf --block-momentum -0.5
expect_usage_error "--block-lr: must be finite and > 0" --sync bmuf --block-lr 0
for flag in --momentum-correction --no-momentum-correction --dense-vectors --no-dense-vectors; do
  expect_usage_error "$flag applies to --sync sync, not bmuf" --sync bmuf $flag
done
expect_usage_error "--clip-grad-norm applies to --sync sync, not bmuf" --sync bmuf --clip-grad-norm 5
expect_usage_error "--bucket-mb applies to --sync sync, not bmuf" --sync bmuf --bucket-mb 4
expect_usage_error "--compress-after-epochs applies to --sync sync, not bmuf" --sync bmuf \
  --compress onebit --compress-after-epochs 1

# 8 steps per epoch: blocks of 3, 3 and 2; Nesterov block momentum and a 1-bit delta, so that
# W, Δ, the block counter and the residuals all have to come back. Step decay: the LR schedule
# must not depend on --epochs, which differs between the runs.
args=(--model resnet20 --limit-train 256 --limit-val 64 --batch-size 32 --ref-batch 32
      --lr-decay step --lr-steps 2 --loader-threads 1 --no-progress --seed 5 --sync bmuf
      --block-steps 3 --block-momentum 0.5
      --nesterov-bmuf --block-lr 1 --compress onebit)
"${mpi[@]}" "$train" "${args[@]}" --epochs 3 --log "$tmp/whole.jsonl" \
    --checkpoint-dir "$tmp/whole" >"$tmp/whole.txt" 2>&1 || { cat "$tmp/whole.txt"; fail "uninterrupted run failed"; }
grep -q "BMUF: blocks of 3 local steps, block momentum 0.500000 (Nesterov), block LR 1.000000, block delta compression onebit" \
  "$tmp/whole.txt" || fail "banner: $(head -1 "$tmp/whole.txt")"

"${mpi[@]}" "$train" "${args[@]}" --epochs 1 --checkpoint-dir "$tmp/ckpt" >"$tmp/first.txt" 2>&1 ||
  { cat "$tmp/first.txt"; fail "the first run failed"; }
[[ $(cat "$tmp/ckpt/latest") == 1 ]] || fail "no epoch-1 commit: $(ls -A "$tmp/ckpt")"
rc=0
FRUGAL_FAULT_INJECT=checkpoint-write:4096 "${mpi[@]}" -x FRUGAL_FAULT_INJECT "$train" "${args[@]}" \
    --epochs 3 --checkpoint-dir "$tmp/ckpt" --resume >"$tmp/killed.txt" 2>&1 || rc=$?
[[ $rc != 0 ]] || { cat "$tmp/killed.txt"; fail "the job survived the kill"; }
[[ $(cat "$tmp/ckpt/latest") == 1 ]] || fail "the kill moved latest to $(cat "$tmp/ckpt/latest")"
"${mpi[@]}" "$train" "${args[@]}" --epochs 3 --checkpoint-dir "$tmp/ckpt" --resume \
    --log "$tmp/resumed.jsonl" >"$tmp/resumed.txt" 2>&1 || { cat "$tmp/resumed.txt"; fail "resume failed"; }
grep -q "resumed from .*ckpt-e1.rank0.pt (epoch 1," "$tmp/resumed.txt" ||
  { cat "$tmp/resumed.txt"; fail "did not resume from epoch 1"; }

# A --sync bmuf checkpoint does not resume as --sync sync.
rc=0
msg=$("${mpi[@]}" "$train" --model resnet20 --limit-train 256 --limit-val 64 --batch-size 32 \
    --ref-batch 32 --loader-threads 1 --no-progress --seed 5 --compress onebit --epochs 4 \
    --checkpoint-dir "$tmp/ckpt" --resume 2>&1) || rc=$?
[[ $rc == 2 ]] || fail "resume as --sync sync exited $rc: $msg"
grep -q -- "--sync must match" <<<"$msg" || fail "resume as --sync sync: $msg"

"$python" - "$tmp/whole.jsonl" "$tmp/resumed.jsonl" <<'PY'
import json
import sys

whole = [json.loads(line) for line in open(sys.argv[1])]
resumed = [json.loads(line) for line in open(sys.argv[2])]
assert [r["epoch"] for r in whole] == [0, 1, 2], whole
assert [r["epoch"] for r in resumed] == [1, 2], resumed
for a, b in zip(whole[1:], resumed):
    # Block numbers continue across the resume: 3 blocks per epoch.
    assert (a["blocks"], a["block"]) == (b["blocks"], b["block"]) == (3, 3 * (a["epoch"] + 1)), (a, b)
    assert a["block_bytes"] == b["block_bytes"] > 0, (a, b)
    for key in ("train_loss", "val_loss", "train_top1", "val_top1"):
        assert abs(a[key] - b[key]) <= 1e-6 * max(1.0, abs(a[key])), (key, a, b)
print("resumed = uninterrupted:",
      [(r["epoch"], round(r["train_loss"], 6), r["block"]) for r in resumed])
PY
echo "bmuf cli ok"
