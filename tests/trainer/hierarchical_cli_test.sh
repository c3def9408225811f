#!/usr/bin/env bash
# frugal-train --hierarchical from the command line: --help documents it; the options it does not
# combine with exit 2 naming both; hosts of unequal size are refused on every rank (exit 2); a
# tiny 1-bit run on 4 ranks simulating 2 hosts of 2 (FRUGAL_HOST_ID per mpirun application
# context) names the topology in its banner and JSON log, learns (finite losses below a uniform
# guess's), sends a small part of its bytes to the other host, checkpoints and resumes, and a
# resume in the other mode is refused by name.
# Usage: hierarchical_cli_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
. "$(dirname "$0")/common.sh"

help=$("$train" --help)
grep -q -- "--hierarchical" <<<"$help" || fail "--help does not document --hierarchical"

expect_refused() {
  local pattern=$1
  shift
  local rc=0 msg
  msg=$("$train" --limit-train 64 --limit-val 64 --no-progress --hierarchical "$@" 2>&1) || rc=$?
  [[ $rc == 2 ]] || fail "$* exited $rc, expected 2 ($msg)"
  grep -q -- "--hierarchical does not combine with $pattern" <<<"$msg" ||
    fail "$*: message '$msg' does not name --hierarchical and '$pattern'"
}
expect_refused "--sync bmuf" --sync bmuf
expect_refused "--sync async-ps" --sync async-ps
expect_refused "--shard-optimizer" --shard-optimizer
expect_refused "--compress powersgd" --compress powersgd
expect_refused "--compress fp16" --compress fp16
expect_refused "--guardrail" --compress onebit --guardrail
expect_refused "--topk-gtopk on" --compress topk --topk-gtopk on
expect_refused "--momentum-masking" --compress topk --momentum-masking
expect_refused "--density-warmup-epochs" --compress topk --density-warmup-epochs 2

common=(--limit-train 1024 --limit-val 512 --batch-size 64 --ref-batch 64 --base-lr 0.1
        --lr-decay step --loader-threads 1 --no-progress --seed 3 --threads 1 --timeout 120)
# hosts A B ARGS...: frugal-train ARGS on A ranks of host a and B ranks of host b.
hosts() {
  local a=$1 b=$2
  shift 2
  "$mpirun" --allow-run-as-root --oversubscribe -np "$a" -x FRUGAL_HOST_ID=a "$train" "$@" \
    : -np "$b" -x FRUGAL_HOST_ID=b "$train" "$@"
}

# 2 + 1 ranks: refused on every rank before the data is read.
rc=0
hosts 2 1 "${common[@]}" --epochs 1 --compress onebit --hierarchical >"$tmp/unequal.txt" 2>&1 ||
  rc=$?
[[ $rc == 2 ]] || { cat "$tmp/unequal.txt"; fail "unequal hosts exited $rc, expected 2"; }
# Occurrences, not lines: the ranks' messages share mpirun's output and may land on one line.
[[ $(grep -o -- "--hierarchical: needs the same number of ranks on every host" \
  "$tmp/unequal.txt" | wc -l) == 3 ]] || { cat "$tmp/unequal.txt"; fail "not refused on all 3 ranks"; }

hier=(--compress onebit --hierarchical)
hosts 2 2 "${common[@]}" --epochs 1 "${hier[@]}" --log "$tmp/hier.jsonl" \
  --checkpoint-dir "$tmp/ckpt" >"$tmp/hier.txt" 2>&1 ||
  { cat "$tmp/hier.txt"; fail "2 x 2 hierarchical run failed"; }
grep -q "compression onebit.*; hierarchical: 2 hosts x 2 ranks" "$tmp/hier.txt" ||
  fail "banner: $(head -1 "$tmp/hier.txt")"
"$python" - "$tmp/hier.jsonl" <<'PY'
import json
import math
import sys

records = [json.loads(line) for line in open(sys.argv[1])]
epoch = [r for r in records if r["kind"] == "epoch"][-1]
assert epoch["hierarchical_hosts"] == 2, epoch
assert epoch["hierarchical_ranks_per_host"] == 2, epoch
assert epoch["skipped_steps"] == 0, epoch
# What crossed hosts is 1-bit's share of each bucket (the 1-D parameters' dense share aside):
# a small part of all rank 0 sent, the dense steps within its host included.
inter, wire = epoch["inter_host_bytes_per_step"], epoch["wire_bytes_per_step"]
assert 0 < inter < 0.1 * wire, (inter, wire)
assert all("inter_host_bytes" in r for r in records), records
# 16 steps learn something: finite, and below the loss of a uniform guess over 10 classes.
for field in ("train_loss", "val_loss"):
    assert math.isfinite(epoch[field]) and epoch[field] < math.log(10), (field, epoch)
print(f"hierarchical 2x2 1-bit: train loss {epoch['train_loss']:.3f}, val loss "
      f"{epoch['val_loss']:.3f}, val top-1 {epoch['val_top1']:.3f}, "
      f"{epoch['wire_bytes_per_step']:.0f} wire B/step, "
      f"{epoch['inter_host_bytes_per_step']:.0f} of them to the other host")
PY

# A hierarchical resume continues the run: a second epoch, logged, finite.
hosts 2 2 "${common[@]}" --epochs 2 "${hier[@]}" --log "$tmp/hier.jsonl" \
  --checkpoint-dir "$tmp/ckpt" --resume >"$tmp/resume.txt" 2>&1 ||
  { cat "$tmp/resume.txt"; fail "the hierarchical resume failed"; }
"$python" - "$tmp/hier.jsonl" <<'PY'
import json
import math
import sys

epochs = [json.loads(line) for line in open(sys.argv[1])]
epochs = [r for r in epochs if r["kind"] == "epoch"]
assert [r["epoch"] for r in epochs] == [0, 1], epochs
assert math.isfinite(epochs[1]["train_loss"]), epochs[1]
assert epochs[1]["hierarchical_hosts"] == 2, epochs[1]
PY

# The checkpoint holds hierarchical error-feedback state: resuming it flat is refused by name.
rc=0
"$mpirun" --allow-run-as-root --oversubscribe -np 4 "$train" "${common[@]}" --epochs 3 \
  --compress onebit --checkpoint-dir "$tmp/ckpt" --resume >"$tmp/flat.txt" 2>&1 || rc=$?
[[ $rc != 0 ]] || fail "a flat resume of a hierarchical checkpoint succeeded"
grep -q "saved with hierarchical on" "$tmp/flat.txt" ||
  { cat "$tmp/flat.txt"; fail "the flat resume does not say why"; }
echo "hierarchical cli ok"
