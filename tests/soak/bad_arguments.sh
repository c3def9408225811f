#!/usr/bin/env bash
# The command-line tools on bad input (issue 8): each must print a message naming the offending
# option and exit with status 2, before starting any communication.
# Usage: bad_arguments.sh FRUGAL_BENCH FRUGAL_SOAK
set -uo pipefail
bench=$1 soak=$2
failures=0
expect_2() {  # expect_2 NEEDLE PROGRAM ARGS...
  local needle=$1 out rc
  shift
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if ((rc != 2)) || [[ $out != *"$needle"* ]]; then
    echo "FAIL: $* -> exit $rc (want 2), output: $out"
    failures=$((failures + 1))
  else
    echo "ok: $* -> exit 2: $out"
  fi
}
expect_2 --density "$bench" --methods topk --density 0
expect_2 --density "$bench" --methods topk --density 1.5
expect_2 --bits "$bench" --methods qsgd --bits 3
expect_2 "--bucket-size: must be a multiple of 8" "$bench" --methods onebit --bucket-size 7
expect_2 "--bucket was renamed --bucket-size" "$bench" --bucket 8
expect_2 "--density applies to --methods topk only, not onebit" "$bench" --methods onebit --density 0.5
expect_2 --sizes "$bench" --sizes -5
expect_2 --sizes "$bench" --sizes 0
expect_2 --iters "$bench" --iters 0
expect_2 --timeout "$bench" --timeout 0
expect_2 --bogus "$bench" --bogus
expect_2 --iters "$soak" --iters 0
expect_2 --iters "$soak" --iters -3
expect_2 --max-count "$soak" --max-count 0
expect_2 --transport "$soak" --transport tcp
expect_2 --bogus "$soak" --bogus 1
"$bench" --help >/dev/null || { echo "FAIL: frugal-bench --help"; failures=$((failures + 1)); }
"$soak" --help >/dev/null || { echo "FAIL: frugal-soak --help"; failures=$((failures + 1)); }
exit $((failures > 0))
