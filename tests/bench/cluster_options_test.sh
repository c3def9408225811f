#!/bin/bash
# bench/cluster/run without root: option errors exit 2 naming the option, and the shaping check
# (--check-shaping) passes rows slower than the link allows and flags rows faster than it.
# Usage: cluster_options_test.sh <bench/cluster/run>
set -uo pipefail
run=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

expect_usage() {  # expect_usage <text in message> <args...>
  local want=$1 status
  shift
  "$run" "$@" >"$work/out" 2>&1
  status=$?
  [[ $status == 2 ]] || fail "'$*' exited $status, expected 2: $(cat "$work/out")"
  grep -q -- "$want" "$work/out" || fail "'$*': message lacks '$want': $(cat "$work/out")"
}
expect_usage "--np" --np 1
expect_usage "--np" --np many
expect_usage "--rate" --rate fast
expect_usage "--rate" --rate 10kbit
expect_usage "--delay" --delay soon
expect_usage "--transport" --transport tcp
expect_usage "--timeout" --timeout 0
expect_usage "unknown option" --bogus
# What only a frugal-bench run reads is refused with a command instead of ignored.
expect_usage "--json is for frugal-bench runs; --exec" --exec --json x -- true
expect_usage "--transport is for frugal-bench runs; --mpirun-exec" --transport ucx --mpirun-exec -- true
expect_usage "--keep runs nothing" --keep --exec -- true
"$run" --help | grep -q "SHAPING VIOLATED" || fail "--help does not explain the shaping check"

# 1 MiB dense at 1gbit, P = 2: each rank must send 2(P-1)/P x 1 MiB = 1048576 B through a
# 125 MB/s link whose token bucket passes its 125000 B burst at once: at least 7388.6 us (5%
# tolerance: 7019 us). A compressed row is bounded by its own wire bytes (1000000 B: 7000 us, 6650 with tolerance).
row() {  # row <method> <median_us> [wire_bytes]
  echo "{\"method\": \"$1\", \"selected\": \"x\", \"ranks\": 2, \"bytes\": 1048576, \"median_us\": $2, \"wire_bytes_per_rank\": ${3:-null}}"
}
{ row dense 7100; row mpi 9000; row onebit 6700 1000000; row topk 1 100000; } >"$work/ok.jsonl"
"$run" --check-shaping "$work/ok.jsonl" --rate 1gbit >"$work/out" 2>&1 ||
  fail "plausible rows flagged: $(cat "$work/out")"
[[ $(grep -c " ok$" "$work/out") == 4 ]] || fail "expected 4 ok rows: $(cat "$work/out")"

for bad in "$(row dense 6900)" "$(row mpi 5000)" "$(row onebit 6500 1000000)"; do
  echo "$bad" >"$work/bad.jsonl"
  "$run" --check-shaping "$work/bad.jsonl" --rate 1gbit >"$work/out" 2>&1
  status=$?
  [[ $status == 3 ]] || fail "row faster than the link gave exit $status, expected 3: $bad"
  grep -q "SHAPING VIOLATED" "$work/out" || fail "violation not flagged: $(cat "$work/out")"
done
# The same dense row is fine on a 10x faster link (and a 100x slower one flags 1 ms).
row dense 6900 >"$work/fast.jsonl"
"$run" --check-shaping "$work/fast.jsonl" --rate 10gbit >/dev/null 2>&1 || fail "10gbit bound wrong"
"$run" --check-shaping "$work/fast.jsonl" --rate 100mbit >/dev/null 2>&1 && fail "100mbit bound wrong"
echo "ok: option errors, shaping check bounds"
