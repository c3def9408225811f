#!/usr/bin/env bash
# frugal-train --sync async-ps end to end: its flags documented, bad values and flags of other
# modes refused by name (exit 2); a 3-rank run (2 workers, 1 server, a straggler, top-k pushes)
# whose JSON log has every parameter-server field with the servers' applied count equal to the
# pushes; and a server killed mid-run: both workers fail (exit 3) within the timeout.
# Usage: ps_cli_test.sh FRUGAL_TRAIN MPIRUN [LAUNCH]
set -euo pipefail
train=$1 mpirun=$2 launch=${3:-}
. "$(dirname "$0")/common.sh"

help=$("$train" --help)
for option in servers staleness straggler; do
  grep -q -- "--$option" <<<"$help" || fail "--help does not document --$option"
done
grep -q "async-ps" <<<"$help" || fail "--help does not mention --sync async-ps"

expect_usage_error "--servers needs --sync async-ps" --servers 2
expect_usage_error "--staleness needs --sync async-ps" --sync bmuf --staleness 1
expect_usage_error "--servers: must be >= 1" --sync async-ps --servers 0
expect_usage_error "--staleness: must be >= 0" --sync async-ps --staleness -1
expect_usage_error "--staleness: expected a number of steps or inf, got 'forever'" \
  --sync async-ps --staleness forever
for flag in --momentum-correction --no-momentum-correction --dense-vectors --resume; do
  expect_usage_error "$flag does not apply to --sync async-ps" --sync async-ps $flag
done
expect_usage_error "--bucket-mb does not apply to --sync async-ps" --sync async-ps --bucket-mb 4
expect_usage_error "--checkpoint-dir does not apply to --sync async-ps" --sync async-ps \
  --checkpoint-dir "$tmp/c"
expect_usage_error "--block-steps needs --sync bmuf" --sync async-ps --block-steps 2
expect_usage_error "--compress powersgd needs --sync sync" --sync async-ps --compress powersgd
expect_usage_error "--straggler: expected RANK:FACTOR" --straggler 1
expect_usage_error "--straggler: the factor must be finite and >= 1" --straggler 0:0.5

tiny=(--model resnet20 --limit-train 256 --limit-val 64 --batch-size 32 --ref-batch 32
      --loader-threads 1 --no-progress --threads 1 --seed 5)
# Too many servers: every rank refuses, naming the flag.
rc=0
"$mpirun" --allow-run-as-root --oversubscribe -np 2 "$train" "${tiny[@]}" --epochs 1 \
  --sync async-ps --servers 2 >"$tmp/servers.txt" 2>&1 || rc=$?
[[ $rc == 2 ]] || { cat "$tmp/servers.txt"; fail "--servers 2 of 2 ranks exited $rc"; }
# (The two ranks' lines may interleave: count the messages, not the lines.)
[[ $(grep -o -- "--servers: must be below the number of ranks" "$tmp/servers.txt" | wc -l) == 2 ]] ||
  { cat "$tmp/servers.txt"; fail "not refused on both ranks"; }

"$mpirun" --allow-run-as-root --oversubscribe -np 3 "$train" "${tiny[@]}" --epochs 2 \
  --sync async-ps --servers 1 --staleness inf --compress topk --density 0.05 \
  --straggler 1:2 --log "$tmp/run.jsonl" >"$tmp/run.txt" 2>&1 ||
  { cat "$tmp/run.txt"; fail "the async-ps run failed"; }
grep -q "asynchronous parameter server: 1 server rank(s), staleness unbounded, pushes compression topk" \
  "$tmp/run.txt" || fail "banner: $(head -1 "$tmp/run.txt")"
grep -q "rank 1 straggles" "$tmp/run.txt" || fail "banner does not name the straggler"
grep -q "parameter server rank 2 (shard 0, [0-9]* parameters): applied 32 updates (16 16 per worker)" \
  "$tmp/run.txt" || { cat "$tmp/run.txt"; fail "no server account of 32 updates"; }
"$python" - "$tmp/run.jsonl" <<'PY' || fail "JSON log"
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
epochs = [r for r in records if r["kind"] == "epoch"]
assert len(epochs) == 2, records
pushed = 0
for r in epochs:
    for field in ("pushes", "applied_updates", "staleness_max", "staleness_mean",
                  "push_bytes", "pull_bytes"):
        assert field in r, (field, r)
    pushed += r["pushes"]
    assert r["pushes"] == 16, r            # 2 workers x 8 steps
    assert r["applied_updates"] == pushed, r
    assert 0 <= r["staleness_mean"] <= r["staleness_max"], r
    # top-k at 5% pushes far fewer bytes than the dense pulls bring back
    assert r["push_bytes"] * 4 < r["pull_bytes"], r
print("async-ps log ok:", [(r["pushes"], r["applied_updates"], r["staleness_max"])
                          for r in epochs])
PY

# A server killed mid-run (UCX over the launcher's bootstrap): both workers fail, exit 3, within
# twice the timeout of the kill.
if [[ -n $launch ]]; then
  cat >"$tmp/rank.sh" <<SH
#!/usr/bin/env bash
"$train" ${tiny[*]} --epochs 500 --sync async-ps --servers 1 &
child=\$!
if [[ \$FRUGAL_RANK == 2 ]]; then
  sleep 4
  date +%s.%N >"$tmp/killed_at"
  kill -9 \$child
fi
rc=0; wait \$child || rc=\$?
date +%s.%N >"$tmp/end\$FRUGAL_RANK"
echo \$rc >"$tmp/rc\$FRUGAL_RANK"
exit \$rc
SH
  chmod +x "$tmp/rank.sh"
  rc=0
  FRUGAL_TIMEOUT=5 "$launch" -np 3 --grace 30 -- "$tmp/rank.sh" >"$tmp/kill.txt" 2>&1 || rc=$?
  [[ $rc != 0 ]] || fail "the job succeeded although the server was killed"
  for r in 0 1; do
    [[ $(cat "$tmp/rc$r") == 3 ]] || { cat "$tmp/kill.txt"; fail "worker $r exited $(cat "$tmp/rc$r"), expected 3"; }
    grep -q "rank $r: training failed (peer failure\|rank $r: training failed (timeout" "$tmp/kill.txt" ||
      { cat "$tmp/kill.txt"; fail "worker $r did not report the failure"; }
    took=$("$python" -c "print(float(open('$tmp/end$r').read()) - float(open('$tmp/killed_at').read()))")
    "$python" -c "import sys; sys.exit(0 if $took < 2 * 5 + 3 else 1)" ||
      fail "worker $r took ${took}s after the kill (timeout 5 s)"
    echo "worker $r failed ${took}s after the server was killed"
  done
fi
echo "async-ps cli ok"
