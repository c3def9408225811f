#!/bin/bash
# frugal-model end to end: --help, a calibration from synthetic transport rows, compare and
# project output, and bad input refused by name with exit status 2. No timing is asserted.
# Usage: cli_test.sh <frugal-model>
set -euo pipefail
model=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
# expect_usage <text the message must hold> <args...>: exit status 2 and the text on stderr.
expect_usage() {
  local want=$1 status=0
  shift
  "$model" "$@" >"$work/out" 2>"$work/err" || status=$?
  ((status == 2)) || fail "frugal-model $*: exit $status, expected 2"
  grep -qF -- "$want" "$work/err" || fail "frugal-model $*: no '$want' in: $(cat "$work/err")"
}

"$model" --help >"$work/help"
for word in calibrate compare project --rate --latency --cores --fit-efficiency max\(1; do
  grep -qF -- "$word" "$work/help" || fail "--help does not mention $word"
done

# Transport rows: dense ring at P = 2, a small and a large buffer.
row() {  # row <method> <selected> <ranks> <bytes> <median_us> <wire>
  printf '{"method": "%s", "algorithm": "%s", "selected": "%s", "transport": "mpi", "ranks": %d, "bytes": %d, "median_us": %s, "wire_bytes_per_rank": %s}\n' \
    "$1" "$2" "$2" "$3" "$4" "$5" "$6"
}
{ row dense ring 2 4096 3000 4096; row dense ring 2 102400000 300000 102400000; } >"$work/transport.jsonl"
"$model" calibrate --transport "$work/transport.jsonl" --out "$work/cal.txt" --elements 4096,8192 --repeats 1 >/dev/null
head -1 "$work/cal.txt" | grep -qx 'frugal-model-calibration 2' || fail "calibration file magic"
# 3 rounds (1 agreement + 2 ring) in 3 ms, less a few microseconds of reduction.
/usr/bin/python3 - "$work/cal.txt" <<'PY'
import sys
values = dict(l.split(" ", 1) for l in open(sys.argv[1]).read().splitlines()[1:] if not l.startswith("#"))
latency = float(values["message_seconds"])
assert 0.9e-3 < latency <= 1e-3, latency
assert float(values["stack_seconds_per_byte"]) > 0, values["stack_seconds_per_byte"]
assert float(values["small.onebit.encode_payload"]) > 0
assert float(values["large.fresh"]) > 0
PY

{ row dense ring 2 102400000 1700000 102400000; row onebit two_phase 4 1048576 5000 99480; row mpi MPI_Allreduce 4 1048576 30000 null; } >"$work/rows.jsonl"
# A row whose iterations spread from 1 us to 1000 s: any prediction is in range, none near 1 ms.
echo '{"method": "qsgd", "algorithm": "two_phase", "selected": "two_phase", "ranks": 4, "bytes": 1048576, "median_us": 1000, "min_us": 1, "max_us": 1e9, "wire_bytes_per_rank": null}' >>"$work/rows.jsonl"
"$model" compare --calibration "$work/cal.txt" --rate 1gbit --fit-efficiency "$work/rows.jsonl" >"$work/compare"
grep -q 'qsgd/two_phase.*MISS, in range$' "$work/compare" || fail "compare: the spread row is not 'MISS, in range': $(cat "$work/compare")"
grep -q 'dense/ring.*fit$' "$work/compare" || fail "compare: no fitted ring row: $(cat "$work/compare")"
grep -q 'onebit/two_phase.*, bytes differ$' "$work/compare" || fail "compare: the onebit row's made-up bytes not flagged: $(cat "$work/compare")"
! grep -q 'dense/ring.*bytes differ' "$work/compare" || fail "compare: the ring's exact bytes flagged"
grep -q '^# [0-9]* of 3 predicted rows within 25% of the measurement; [1-3] of 3 between' "$work/compare" || fail "compare: no summary"
"$model" compare --calibration "$work/cal.txt" --rate 1gbit --markdown "$work/rows.jsonl" | grep -q '^| 4 | 1048576 | onebit/two_phase |' ||
  fail "compare --markdown"

"$model" project --calibration "$work/cal.txt" --ranks 16,1024 --rates 1gbit,100gbit >"$work/project"
grep -q '^onebit/two_phase' "$work/project" || fail "project: no onebit row"
grep -q 'stops paying' "$work/project" || fail "project: no summary"
"$model" project --calibration "$work/cal.txt" --ranks 16 --methods ring,mpi,qsgd:allgather >"$work/project"
grep -q '^qsgd/allgather' "$work/project" || fail "project --methods"
! grep -q '^onebit' "$work/project" || fail "project --methods ran more than asked"

# Bad input, each refused by name.
expect_usage "needs a command" 
expect_usage "unknown command 'predict'" predict
expect_usage "unknown option '--speed'" compare --speed 1 "$work/rows.jsonl"
expect_usage "compare needs --rate" compare --calibration "$work/cal.txt" "$work/rows.jsonl"
expect_usage "--rate: '1gbps'" compare --calibration "$work/cal.txt" --rate 1gbps "$work/rows.jsonl"
expect_usage "--latency: 'soon'" compare --calibration "$work/cal.txt" --rate 1gbit --latency soon "$work/rows.jsonl"
expect_usage "--ranks: '0'" project --calibration "$work/cal.txt" --ranks 16,0
expect_usage "--methods" project --calibration "$work/cal.txt" --methods ring,zip
expect_usage "--methods" project --calibration "$work/cal.txt" --methods topk:two_phase
# frugal-bench's rows that the model has no form for
for row in powersgd:2 onebit:hierarchical topk:gtopk qsgd:reduce_scatter dense:shard_allgather; do
  expect_usage "the model has no form for" project --calibration "$work/cal.txt" --methods "$row"
done
expect_usage "--efficiency: must be in (0, 1]" compare --calibration "$work/cal.txt" --rate 1gbit --efficiency 2 "$work/rows.jsonl"
sed '1s/.*/frugal-model-calibration 0/' "$work/cal.txt" >"$work/old.txt"
expect_usage "calibration file '$work/old.txt': another version (0)" project --calibration "$work/old.txt"
expect_usage "calibration file '$work/rows.jsonl': another format" project --calibration "$work/rows.jsonl"
expect_usage "calibration file '$work/none.txt': cannot read it" project --calibration "$work/none.txt"
echo '{"method": "dense"' >"$work/bad.jsonl"
expect_usage "$work/bad.jsonl:1" compare --calibration "$work/cal.txt" --rate 1gbit "$work/bad.jsonl"
expect_usage "--elements: give two sizes" calibrate --transport "$work/transport.jsonl" --out "$work/x.txt" --elements 4096
expect_usage "transport" calibrate --transport "$work/rows.jsonl" --out "$work/x.txt" --elements 4096,8192 --repeats 1
echo "frugal-model command line: ok"
