#!/bin/bash
# frugal-bench end to end under mpirun -np 2: --ranks-check on every method at a few sizes, and the
# --json and --csv files of the same run must hold the same rows with the same fields in the same
# order, every row checked ok with 0 wrong elements, the MPI_Allreduce row included. Bad flags
# exit 2. No timing is asserted.
# Usage: outputs_test.sh <mpirun> <frugal-bench>
set -euo pipefail
mpirun=$1
bench=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

"$mpirun" --allow-run-as-root --oversubscribe -np 2 "$bench" --sizes 4,4K,100000 --iters 3 \
  --warmup 1 --ranks-check --algorithms ring,auto,mpi --methods dense,fp16,topk,onebit,qsgd \
  --op average -q --json "$work/out.jsonl" --csv "$work/out.csv" >"$work/table.txt"

/usr/bin/python3 - "$work" <<'PY'
import csv, json, sys
work = sys.argv[1]
rows = [json.loads(l) for l in open(work + "/out.jsonl") if l.strip()]
with open(work + "/out.csv") as f:
    reader = csv.reader(f)
    header = next(reader)
    lines = list(reader)
assert len(rows) == 3 * 7, "expected 21 rows (3 sizes x 7 methods), got %d" % len(rows)
assert header == list(rows[0].keys()), (header, list(rows[0].keys()))
assert len(lines) == len(rows), (len(lines), len(rows))
for r, line in zip(rows, lines):
    for key, cell in zip(header, line):
        value = r[key]
        if value is None:
            assert cell == "", (key, cell)
        elif isinstance(value, str):
            assert cell == value, (key, cell, value)
        else:
            assert float(cell) == float(value), (key, cell, value)
    assert r["check"] == "ok" and r["wrong"] == 0, r
    assert r["ranks"] == 2 and r["op"] == "average"
    if r["method"] in ("dense", "mpi"):
        assert r["rel_error"] == 0, r
    if r["method"] == "dense":
        # Dense wire bytes are 2(P-1)/P of the buffer plus the 32-byte agreement block that
        # every dense allreduce exchanges (P = 2: one block per rank).
        assert r["wire_bytes_per_rank"] == r["bytes"] + 32, r
        assert abs(r["compression_ratio"] - r["bytes"] / (r["bytes"] + 32)) < 1e-9, r
    assert r["min_us"] <= r["median_us"] <= r["p95_us"] <= r["max_us"], r
    assert abs(r["busbw_gbps"] - r["algbw_gbps"]) < 1e-12  # 2(P-1)/P = 1 at P = 2
    assert r["effective_gbps"] == r["algbw_gbps"]
print("ok: %d rows, JSON and CSV agree, all checked" % len(rows))
PY
table_rows=$(grep -c '^ *[0-9]' "$work/table.txt")
[[ $table_rows == 21 ]] || { echo "FAIL: table has $table_rows rows, expected 21"; exit 1; }

for bad in "--sizes 5" "--mode fast" "--csv $work/x --json $work/x"; do
  status=0
  # shellcheck disable=SC2086
  "$mpirun" --allow-run-as-root --oversubscribe -np 2 "$bench" $bad >/dev/null 2>"$work/err" || status=$?
  [[ $status == 2 ]] || { echo "FAIL: '$bad' exited $status, expected 2"; cat "$work/err"; exit 1; }
done
echo "ok: bad flags exit 2"
