#!/usr/bin/env bash
# frugal-train --resume under another -np than the checkpoint was written with (issue 23,
# point 3): 4 ranks -> 2 and 2 ranks -> 3, 1-bit compression with error feedback (two-phase at
# 3 and 4 ranks, so server residuals are re-cut too; allgather at 2, where they fold into the
# worker residuals), with momentum correction (1-bit's default: each rank's velocity is
# re-cut too) and without. The resume says it redistributed the state, the update the residuals
# carry and the velocities' sum (--print-carried-update: summed over ranks and
# elements) are the ones the checkpoint held, the next losses are finite and training goes on;
# what cannot be redistributed is refused by name.
# Usage: elastic_resume_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
. "$(dirname "$0")/common.sh"
mpi() { local n=$1; shift; "$mpirun" --allow-run-as-root --oversubscribe -np "$n" "$train" "$@"; }

# The global batch 48 divides among 2, 3 and 4 ranks; 10 steps per epoch at any of them.
common=(--limit-train 480 --limit-val 96 --batch-size 48 --ref-batch 48 --base-lr 0.1
        --lr-decay step --compress onebit --loader-threads 1 --no-progress --seed 7
        --print-carried-update)

# A quantity printed at the checkpoint and after the resume (carried update or velocity sum):
# equal up to float rounding (the redistribution sums in another order), and not zero (or
# nothing was tested).
check_carried() {
  local what=${3:-carried update} before after
  before=$(sed -n "s/^$what at checkpoint 1: //p" "$1")
  after=$(sed -n "s/^$what after resume: //p" "$2")
  [[ -n $before && -n $after ]] || fail "no $what lines: $(cat "$1" "$2")"
  "$python" - "$before" "$after" <<'PY'
import sys

before, after = float(sys.argv[1]), float(sys.argv[2])
assert before != 0, "the checkpoint carries nothing"
assert abs(after - before) <= 1e-4 * abs(before) + 1e-6, (before, after)
print(f"carried update {before:.9g} -> {after:.9g}")
PY
}

check_continues() {
  "$python" - "$1" <<'PY'
import json
import math
import sys

records = [json.loads(line) for line in open(sys.argv[1])]
assert [r["epoch"] for r in records] == [1], records
r = records[0]
for key in ("train_loss", "val_loss"):
    assert math.isfinite(r[key]), r
# Not diverged: chance is ln 10 = 2.30 (20 steps of 48 images barely leave it at LR 0.1).
assert r["train_loss"] < 2.5 and r["val_loss"] < 2.5, r
print(f"epoch 2 after the resume: train loss {r['train_loss']:.4f}, val top-1 "
      f"{r['val_top1']:.3f}")
PY
}

for spec in "4 2 mc" "2 3 mc" "4 3 nomc"; do
  read -r from to kind <<<"$spec"
  extra=()
  [[ $kind == nomc ]] && extra=(--no-momentum-correction)
  dir=$tmp/ckpt-$from-$to
  first=$tmp/first-$from-$kind.txt resumed=$tmp/resumed-$to-$kind
  mpi "$from" "${common[@]}" "${extra[@]}" --epochs 1 --checkpoint-dir "$dir" >"$first" 2>&1 ||
    { cat "$first"; fail "the $from-rank run failed"; }
  if [[ $kind == mc ]]; then
    grep -q "momentum correction" "$first" || fail "1-bit without momentum correction by default: $(cat "$first")"
  else
    ! grep -q "momentum correction" "$first" || fail "--no-momentum-correction ignored: $(cat "$first")"
  fi
  mpi "$to" "${common[@]}" "${extra[@]}" --epochs 2 --checkpoint-dir "$dir" --resume --log "$resumed.jsonl" \
      >"$resumed.txt" 2>&1 || { cat "$resumed.txt"; fail "resume $from -> $to ($kind) failed"; }
  grep -q "error-feedback state redistributed from $from to $to ranks; resumed from .*ckpt-e1.rank\*.pt (epoch 1, step 10)" \
    "$resumed.txt" || { cat "$resumed.txt"; fail "no redistribution line ($from -> $to)"; }
  check_carried "$first" "$resumed.txt"
  if [[ $kind == mc ]]; then
    check_carried "$first" "$resumed.txt" "velocity sum"
  else
    ! grep -q "velocity sum" "$resumed.txt" || fail "velocities without momentum correction"
  fi
  check_continues "$resumed.jsonl"
  [[ $(cat "$dir/latest") == 2 ]] || fail "no epoch-2 commit after resuming on $to ranks"
  for ((r = 0; r < to; ++r)); do
    [[ -f $dir/ckpt-e2.rank$r.pt ]] || fail "no epoch-2 file of rank $r: $(ls "$dir")"
  done
done

# The 3-rank epoch-2 checkpoint resumes on 3 ranks as before (no redistribution).
mpi 3 "${common[@]}" --epochs 3 --checkpoint-dir "$tmp/ckpt-2-3" --resume >"$tmp/same.txt" 2>&1 ||
  { cat "$tmp/same.txt"; fail "same-size resume failed"; }
grep -q "resumed from .*ckpt-e2.rank0.pt (epoch 2," "$tmp/same.txt" || fail "same-size resume: $(cat "$tmp/same.txt")"
! grep -q "redistributed" "$tmp/same.txt" || fail "a same-size resume redistributed"

# What has no redistribution rule is refused by name on every rank (exit 2).
expect_refused() {
  local n=$1 dir=$2 pattern=$3
  shift 3
  local rc=0 msg
  msg=$(mpi "$n" "$@" --checkpoint-dir "$dir" --resume 2>&1) || rc=$?
  [[ $rc == 2 ]] || fail "$* on $n ranks exited $rc: $msg"
  grep -q -- "$pattern" <<<"$msg" || fail "$*: '$msg' does not mention '$pattern'"
}
psgd=(--limit-train 480 --limit-val 96 --batch-size 48 --ref-batch 48 --loader-threads 1
      --no-progress --seed 7 --compress powersgd --powersgd-start-iter 2)
mpi 2 "${psgd[@]}" --epochs 1 --checkpoint-dir "$tmp/psgd" >"$tmp/psgd.txt" 2>&1 ||
  { cat "$tmp/psgd.txt"; fail "powersgd run failed"; }
expect_refused 3 "$tmp/psgd" "--compress powersgd cannot resume from 2 to 3 ranks" "${psgd[@]}" --epochs 2
# A checkpoint with global momentum does not resume as one with rank-local velocities.
expect_refused 2 "$tmp/ckpt-4-3" "momentum correction must match" "${common[@]}" --epochs 3
echo "elastic resume ok"
