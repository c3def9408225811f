#!/usr/bin/env bash
# frugal-train --resume under another -np than the checkpoint was written with (issue 23,
# point 3): 4 ranks -> 2 and 2 ranks -> 3, 1-bit compression with error feedback (two-phase at
# 3 and 4 ranks, so server residuals are re-cut too; allgather at 2, where they fold into the
# worker residuals). The resume says it redistributed the state, the update the residuals carry
# (--print-carried-update: summed over ranks and elements) is the one the checkpoint held, the
# next losses are finite and training goes on; what cannot be redistributed is refused by name.
# Usage: elastic_resume_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
python=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpi() { local n=$1; shift; "$mpirun" --allow-run-as-root --oversubscribe -np "$n" "$train" "$@"; }

# The global batch 48 divides among 2, 3 and 4 ranks; 10 steps per epoch at any of them.
common=(--limit-train 480 --limit-val 96 --batch-size 48 --ref-batch 48 --base-lr 0.1
        --lr-decay step --compress onebit --loader-threads 1 --no-progress --seed 7
        --print-carried-update)

# The carried update printed at the checkpoint and after the resume: equal up to float rounding
# (the redistribution sums residuals in another order), and not zero (or nothing was tested).
check_carried() {
  local before after
  before=$(sed -n 's/^carried update at checkpoint 1: //p' "$1")
  after=$(sed -n 's/^carried update after resume: //p' "$2")
  [[ -n $before && -n $after ]] || fail "no carried-update lines: $(cat "$1" "$2")"
  "$python" - "$before" "$after" <<'PY'
import sys

before, after = float(sys.argv[1]), float(sys.argv[2])
assert before != 0, "the checkpoint carries no update"
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

for pair in "4 2" "2 3"; do
  read -r from to <<<"$pair"
  dir=$tmp/ckpt-$from-$to
  mpi "$from" "${common[@]}" --epochs 1 --checkpoint-dir "$dir" >"$tmp/first-$from.txt" 2>&1 ||
    { cat "$tmp/first-$from.txt"; fail "the $from-rank run failed"; }
  mpi "$to" "${common[@]}" --epochs 2 --checkpoint-dir "$dir" --resume --log "$tmp/resumed-$to.jsonl" \
      >"$tmp/resumed-$to.txt" 2>&1 || { cat "$tmp/resumed-$to.txt"; fail "resume $from -> $to failed"; }
  grep -q "error-feedback state redistributed from $from to $to ranks; resumed from .*ckpt-e1.rank\*.pt (epoch 1, step 10)" \
    "$tmp/resumed-$to.txt" || { cat "$tmp/resumed-$to.txt"; fail "no redistribution line ($from -> $to)"; }
  check_carried "$tmp/first-$from.txt" "$tmp/resumed-$to.txt"
  check_continues "$tmp/resumed-$to.jsonl"
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
mc=(--limit-train 480 --limit-val 96 --batch-size 48 --ref-batch 48 --loader-threads 1
    --no-progress --seed 7 --compress onebit --momentum-correction)
mpi 2 "${mc[@]}" --epochs 1 --checkpoint-dir "$tmp/mc" >"$tmp/mc.txt" 2>&1 ||
  { cat "$tmp/mc.txt"; fail "momentum-correction run failed"; }
expect_refused 3 "$tmp/mc" "--momentum-correction cannot resume from 2 to 3 ranks" "${mc[@]}" --epochs 2
echo "elastic resume ok"
