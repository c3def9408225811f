#!/usr/bin/env bash
# A rank dies mid-run (SIGKILL after the first checkpoint): the survivor reports the failure and
# exits 3 (not a hang), and the committed checkpoint is intact and loadable (--resume on a fresh
# pair of ranks continues from it).
# Usage: peer_failure_test.sh FRUGAL_TRAIN LAUNCH
set -euo pipefail
train=$1 launch=$2
. "$(dirname "$0")/common.sh"
export OMP_NUM_THREADS=1 FRUGAL_TIMEOUT=20
args=(--limit-train 512 --limit-val 128 --batch-size 64 --ref-batch 64 --compress topk
      --density 0.05 --loader-threads 1 --no-progress --checkpoint-dir "$tmp/ckpt")

# Rank 1 is killed once the epoch-1 checkpoint is committed; rank 0 keeps its exit status.
cat >"$tmp/rank.sh" <<SH
#!/usr/bin/env bash
"$train" ${args[*]} --epochs 50 &
child=\$!
if [[ \$FRUGAL_RANK == 1 ]]; then
  for _ in \$(seq 600); do [[ -f "$tmp/ckpt/latest" ]] && break; sleep 0.1; done
  sleep 0.5
  kill -9 \$child
fi
rc=0; wait \$child || rc=\$?
echo \$rc >"$tmp/rc\$FRUGAL_RANK"
exit \$rc
SH
chmod +x "$tmp/rank.sh"
start=$(date +%s)
rc=0
"$launch" -np 2 --grace 60 -- "$tmp/rank.sh" >"$tmp/out.txt" 2>&1 || rc=$?
elapsed=$(($(date +%s) - start))
[[ $rc != 0 ]] || fail "the job succeeded although rank 1 was killed"
[[ $(cat "$tmp/rc0") == 3 ]] || { cat "$tmp/out.txt"; fail "rank 0 exited $(cat "$tmp/rc0"), expected 3"; }
grep -q "rank 0: training failed (peer failure\|rank 0: training failed (timeout" "$tmp/out.txt" ||
  { cat "$tmp/out.txt"; fail "rank 0 did not report the failure"; }
grep -q "checkpoint in .* is intact" "$tmp/out.txt" || fail "no word about the checkpoint"
latest=$(cat "$tmp/ckpt/latest")
((latest >= 1)) || fail "latest checkpoint $latest"
echo "survivor exited 3 after ${elapsed}s; latest checkpoint: epoch $latest"

# The kept checkpoint resumes.
"$launch" -np 2 -- "$train" "${args[@]}" --epochs $((latest + 1)) --resume >"$tmp/resume.txt" 2>&1 ||
  { cat "$tmp/resume.txt"; fail "resume after the failure did not work"; }
grep -q "resumed from .*ckpt-e$latest.rank0.pt" "$tmp/resume.txt" || { cat "$tmp/resume.txt"; fail "did not resume"; }
echo "peer failure ok"
