#!/usr/bin/env bash
# Crash consistency of checkpoints: frugal-train SIGKILLs itself (FRUGAL_FAULT_INJECT, see
# trainer/fault_injection.hpp) at a chosen instant of writing the epoch-2 checkpoint of a 2-rank
# run that resumed from epoch 1:
#   checkpoint-write:4096  both ranks, 4 KiB into their checkpoint file (before fsync and rename)
#   checkpoint-commit      after every rank's file is renamed in, before rank 0 rewrites `latest`
#   latest-write:0         rank 0, `latest` opened but nothing written yet
# Each time the job must fail, `latest` must still say 1, the epoch-1 files must be untouched,
# and --resume must continue from epoch 1 and finish epoch 2 (committing it and removing the
# torn temporaries). A garbage or empty `latest` must stop --resume with exit 2 naming the file,
# not start afresh over the checkpoints; so must a malformed FRUGAL_FAULT_INJECT.
# Usage: checkpoint_kill_test.sh FRUGAL_TRAIN MPIRUN
set -euo pipefail
train=$1 mpirun=$2
. "$(dirname "$0")/common.sh"
mpi=("$mpirun" --allow-run-as-root --oversubscribe -np 2)
args=(--model resnet20 --limit-train 128 --limit-val 64 --batch-size 64 --ref-batch 64
      --compress topk --density 0.05 --loader-threads 1 --no-progress --seed 5)

# The good checkpoint: epoch 1.
"${mpi[@]}" "$train" "${args[@]}" --epochs 1 --checkpoint-dir "$tmp/good" >"$tmp/good.txt" 2>&1 ||
  { cat "$tmp/good.txt"; fail "the first run failed"; }
[[ $(cat "$tmp/good/latest") == 1 ]] || fail "no epoch-1 commit: $(ls -A "$tmp/good")"

# Kill at POINT while writing epoch 2 (the run resumed from epoch 1), then resume.
kill_and_resume() {
  local point=$1 dir=$tmp/$1
  cp -a "$tmp/good" "$dir"
  local rc=0
  FRUGAL_FAULT_INJECT=$point "${mpi[@]}" -x FRUGAL_FAULT_INJECT "$train" "${args[@]}" --epochs 2 \
      --checkpoint-dir "$dir" --resume >"$tmp/$point.kill.txt" 2>&1 || rc=$?
  [[ $rc != 0 ]] || { cat "$tmp/$point.kill.txt"; fail "$point: the job survived the kill"; }
  grep -q "resumed from .*ckpt-e1.rank0.pt" "$tmp/$point.kill.txt" ||
    { cat "$tmp/$point.kill.txt"; fail "$point: the killed run did not start from epoch 1"; }
  # The kill happened where it was asked for, and left the commit alone.
  [[ $(cat "$dir/latest") == 1 ]] || fail "$point: latest is now '$(cat "$dir/latest")'"
  for r in 0 1; do
    cmp -s "$tmp/good/ckpt-e1.rank$r.pt" "$dir/ckpt-e1.rank$r.pt" || fail "$point: epoch-1 file of rank $r changed"
  done
  case $point in
    checkpoint-write:*)
      for r in 0 1; do
        [[ ! -e $dir/ckpt-e2.rank$r.pt ]] || fail "$point: a partial ckpt-e2.rank$r.pt is in place"
        local torn=("$dir"/.ckpt-e2.rank$r.pt.tmp.*)
        [[ -f ${torn[0]} && $(stat -c %s "${torn[0]}") == 4096 ]] ||
          fail "$point: rank $r was not killed 4096 bytes into its write: $(ls -lA "$dir")"
      done ;;
    checkpoint-commit)
      [[ -f $dir/ckpt-e2.rank0.pt && -f $dir/ckpt-e2.rank1.pt ]] ||
        fail "$point: the epoch-2 files were not both in place: $(ls -A "$dir")" ;;
    latest-write:*)
      local torn=("$dir"/.latest.tmp.*)
      [[ -f ${torn[0]} && ! -s ${torn[0]} ]] || fail "$point: rank 0 was not killed in the commit: $(ls -lA "$dir")" ;;
  esac
  # Resume: from epoch 1 again, to the end.
  "${mpi[@]}" "$train" "${args[@]}" --epochs 2 --checkpoint-dir "$dir" --resume \
      >"$tmp/$point.resume.txt" 2>&1 || { cat "$tmp/$point.resume.txt"; fail "$point: resume failed"; }
  grep -q "resumed from .*ckpt-e1.rank0.pt (epoch 1," "$tmp/$point.resume.txt" ||
    { cat "$tmp/$point.resume.txt"; fail "$point: did not resume from epoch 1"; }
  grep -q "final test accuracy" "$tmp/$point.resume.txt" || fail "$point: the resumed run did not finish"
  [[ $(cat "$dir/latest") == 2 && -f $dir/ckpt-e2.rank0.pt && -f $dir/ckpt-e2.rank1.pt ]] ||
    fail "$point: epoch 2 not committed: $(ls -A "$dir")"
  [[ -z $(find "$dir" -name '.*.tmp.*') ]] || fail "$point: torn temporaries left: $(ls -A "$dir")"
  echo "$point: killed, resumed from epoch 1, finished epoch 2"
}
kill_and_resume checkpoint-write:4096
kill_and_resume checkpoint-commit
kill_and_resume latest-write:0

# A damaged `latest` (never produced by the trainer's atomic commit, but a disk or a user can):
# --resume refuses with exit 2 naming it and leaves the directory as it was.
damaged_latest() {
  local name=$1 content=$2 dir=$tmp/$1
  cp -a "$tmp/good" "$dir"
  printf '%s' "$content" >"$dir/latest"
  cp "$dir/latest" "$tmp/$name.latest"
  local rc=0
  "${mpi[@]}" "$train" "${args[@]}" --epochs 2 --checkpoint-dir "$dir" --resume >"$tmp/$name.txt" 2>&1 || rc=$?
  [[ $rc == 2 ]] || { cat "$tmp/$name.txt"; fail "$name latest: exit $rc, expected 2"; }
  grep -q "latest': malformed" "$tmp/$name.txt" || { cat "$tmp/$name.txt"; fail "$name latest: no message naming it"; }
  cmp -s "$tmp/$name.latest" "$dir/latest" || fail "$name latest: rewritten"
  cmp -s "$tmp/good/ckpt-e1.rank0.pt" "$dir/ckpt-e1.rank0.pt" || fail "$name latest: epoch-1 file changed"
  echo "$name latest: refused with exit 2"
}
damaged_latest garbage $'\x01\xffnot an epoch\n'
damaged_latest empty ''
# A malformed FRUGAL_FAULT_INJECT is a usage error before any training.
rc=0
msg=$(FRUGAL_FAULT_INJECT=checkpoint-write:12x "${mpi[@]}" -x FRUGAL_FAULT_INJECT "$train" "${args[@]}" \
    --epochs 1 --checkpoint-dir "$tmp/typo" 2>&1) || rc=$?
[[ $rc == 2 ]] || fail "malformed FRUGAL_FAULT_INJECT: exit $rc, expected 2 ($msg)"
grep -q "FRUGAL_FAULT_INJECT='checkpoint-write:12x'" <<<"$msg" || fail "no message naming it: $msg"
! grep -q "^epoch 1/1" <<<"$msg" || fail "malformed FRUGAL_FAULT_INJECT: trained before refusing"
echo "malformed FRUGAL_FAULT_INJECT: exit 2"
echo "checkpoint kill ok"
