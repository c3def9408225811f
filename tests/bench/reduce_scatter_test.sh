#!/bin/bash
# frugal-bench's reduce-scatter rows (each checked after an untimed allgather of its shards) and
# shard-allgather rows (the exact sum's shards: dense must give the exact sum, the quantizers
# rank 0's result on every rank) at P = 2 with --ranks-check: a WRONG row exits 1 and fails this
# test. The JSON rows say what ran: every row checked ok, over TRANSPORT (mpi or ucx, default
# mpi), and the count of rows. No timing is asserted.
# Usage: reduce_scatter_test.sh <mpirun> <frugal-bench> [TRANSPORT]
set -euo pipefail
mpirun=$1
bench=$2
transport=${3:-mpi}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
methods=dense:reduce_scatter,fp16:reduce_scatter,onebit:reduce_scatter,qsgd:reduce_scatter
methods+=,dense:shard_allgather,onebit:shard_allgather,qsgd:shard_allgather

"$mpirun" --allow-run-as-root --oversubscribe -np 2 "$bench" --sizes 4K:256K --iters 3 \
  --warmup 1 --ranks-check --transport "$transport" --methods "$methods" \
  --json "$work/rows.jsonl" | tee "$work/rows.txt"

/usr/bin/python3 - "$work/rows.jsonl" "$transport" "$methods" <<'PY'
import json, sys
path, transport, methods = sys.argv[1:]
rows = [json.loads(line) for line in open(path) if line.strip()]
want = {tuple(m.split(":")) for m in methods.split(",")}
sizes = sorted({r["bytes"] for r in rows})
# 4K:256K: the powers of two from 4 KiB to 256 KiB.
assert sizes == [4096 << i for i in range(7)], sizes
for size in sizes:
    got = {(r["method"], r["algorithm"]) for r in rows
           if r["bytes"] == size and r["method"] != "mpi"}
    assert got == want, (size, sorted(got))
for r in rows:
    assert r["check"] == "ok" and r["wrong"] == 0, r
    assert r["ranks"] == 2, r
    if r["method"] == "mpi":
        continue
    assert r["transport"] == transport, r
    if r["method"] == "dense":
        assert r["rel_error"] == 0, r
    else:
        assert r["wire_bytes_per_rank"] > 0, r
print("reduce-scatter rows ok over", transport)
PY
