#!/usr/bin/env bash
# frugal-train --compress auto from the command line: --help documents it and its knobs; the knobs
# without it and the modes it does not combine with exit 2 naming them; a 2-rank Fashion-MNIST
# run of a few steps names the mode in its banner, runs one trial (2 warm-up steps, 2 steps per
# candidate) whose moves and decision are "autotune" records of the JSON log with a cost per
# candidate, keeps one candidate per bucket, and learns; its checkpoint resumes with auto and is
# refused without it.
# Usage: auto_cli_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
. "$(dirname "$0")/common.sh"
mpi=("$mpirun" --allow-run-as-root --oversubscribe -np 2)

help=$("$train" --help)
for option in auto-candidates auto-warmup auto-trial-steps auto-retune auto-margin; do
  grep -q -- "--$option" <<<"$help" || fail "--help does not document --$option"
done
grep -q -- "or auto (each compressed" <<<"$help" || fail "--help does not document --compress auto"

for flag in auto-candidates auto-warmup auto-trial-steps auto-retune auto-margin; do
  value=2
  [[ $flag == auto-candidates ]] && value=dense,fp16
  expect_usage_error "--$flag needs --compress auto" --compress onebit --$flag $value
done
a=(--compress auto)
for mode in "sync bmuf" "sync async-ps" "shard-optimizer" "hierarchical" "algorithm" \
  "momentum-masking" "density-warmup-epochs" "error-feedback off"; do
  read -ra args <<<"--$mode"
  [[ $mode == algorithm ]] && args+=(two_phase)
  [[ $mode == density-warmup-epochs ]] && args+=(2)
  expect_usage_error "--compress auto does not combine with --$mode" "${a[@]}" "${args[@]}"
done
expect_usage_error "--auto-candidates: unknown method 'bogus'" "${a[@]}" --auto-candidates dense,bogus
expect_usage_error "autotune.trial_steps" "${a[@]}" --auto-trial-steps 0
expect_usage_error "autotune.margin" "${a[@]}" --auto-margin=-1
expect_usage_error "--density applies to" "${a[@]}" --density 0.1

# 8 steps an epoch: 2 warm-up, a trial of 3 x 2 steps decided at step 8; a checkpoint; a resume
# for a second epoch on the choice.
common=(--limit-train 512 --limit-val 128 --batch-size 64 --ref-batch 64 --base-lr 0.1
        --lr-decay step --loader-threads 1 --no-progress --seed 3 --threads 1 --timeout 60
        --checkpoint-dir "$tmp/ckpt")
"${mpi[@]}" "$train" "${common[@]}" --epochs 1 "${a[@]}" --auto-warmup 2 --auto-trial-steps 2 \
  --log "$tmp/auto.jsonl" >"$tmp/auto.txt" 2>&1 || { cat "$tmp/auto.txt"; fail "auto run failed"; }
grep -q "compression auto (candidates dense,fp16,ternary; 2 warm-up steps, trials of 2 steps per candidate, no retrial, margin 0.1), error feedback" \
  "$tmp/auto.txt" || fail "banner: $(head -1 "$tmp/auto.txt")"
grep -q "autotune: step 8 bucket" "$tmp/auto.txt" || { cat "$tmp/auto.txt"; fail "no decision line"; }
"$python" - "$tmp/auto.jsonl" <<'PY'
import json
import math
import sys

records = [json.loads(line) for line in open(sys.argv[1])]
tune = [r for r in records if r["kind"] == "autotune"]
moves = [r for r in tune if not r["decision"]]
decisions = [r for r in tune if r["decision"]]
buckets = sorted({r["bucket"] for r in tune})
assert buckets, records
# Every compressed bucket: dense -> fp16 after step 4, fp16 -> ternary after step 6, a decision
# after step 8 with one cost per candidate.
for b in buckets:
    mine = [(r["step"], r["from"], r["to"]) for r in moves if r["bucket"] == b]
    assert mine == [(4, "dense", "fp16"), (6, "fp16", "ternary")], mine
    d = [r for r in decisions if r["bucket"] == b]
    assert len(d) == 1 and d[0]["step"] == 8, d
    assert d[0]["from"] == "ternary" and d[0]["to"] in ("dense", "fp16", "ternary"), d
    assert len(d[0]["costs"]) == 3 and all(c > 0 for c in d[0]["costs"]), d
    # The densest candidate within 10% (--auto-margin's default) of the lowest cost.
    low = min(d[0]["costs"])
    kept = next(i for i, c in enumerate(d[0]["costs"]) if c <= low * 1.1)
    assert ["dense", "fp16", "ternary"][kept] == d[0]["to"], d
epoch = [r for r in records if r["kind"] == "epoch"]
assert len(epoch) == 1 and math.isfinite(epoch[0]["train_loss"]), epoch
print("auto: " + "; ".join(f"bucket {r['bucket']} keeps {r['to']} (costs "
                           + ", ".join(f"{c * 1e3:.2f} ms" for c in r["costs"]) + ")"
                           for r in decisions))
PY
# The checkpoint holds each bucket's candidate: a resume with auto goes on with it (no new trial,
# no record); one without auto is refused naming it.
"${mpi[@]}" "$train" "${common[@]}" --epochs 2 "${a[@]}" --auto-warmup 2 --auto-trial-steps 2 \
  --resume --log "$tmp/resumed.jsonl" >"$tmp/resumed.txt" 2>&1 ||
  { cat "$tmp/resumed.txt"; fail "auto resume failed"; }
! grep -q '"kind":"autotune"' "$tmp/resumed.jsonl" || fail "the resumed run tuned again"
"$python" - "$tmp/resumed.jsonl" <<'PY'
import json
import math
import sys

epoch = [json.loads(line) for line in open(sys.argv[1])]
epoch = [r for r in epoch if r["kind"] == "epoch"]
assert [r["epoch"] for r in epoch] == [1], epoch
assert epoch[0]["train_loss"] < math.log(10), epoch  # below a uniform guess
PY
rc=0
"${mpi[@]}" "$train" "${common[@]}" --epochs 2 --compress fp16 --resume \
  >"$tmp/refused.txt" 2>&1 || rc=$?
[[ $rc != 0 ]] || fail "a resume without --compress auto accepted an auto checkpoint"
grep -m1 "autotune" "$tmp/refused.txt" || { cat "$tmp/refused.txt"; fail "refusal does not name autotune"; }
echo "auto cli ok"
