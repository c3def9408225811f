#!/bin/bash
# frugal-bench's PowerSGD, gTop-k and hierarchical rows under mpirun, every one with --ranks-check
# (a WRONG row exits 1 and fails this test): PowerSGD at ranks 1 and 4 and gTop-k beside top-k at
# P = 2 (sum) and P = 3 (average: gTop-k's folded rank), then dense, 1-bit and top-k hierarchical
# on 2 "hosts" of 2 ranks (FRUGAL_HOST_ID per mpirun application context), and hosts of unequal
# size refused with exit 2. The JSON rows say what ran: fields, the check, wire bytes. No timing
# is asserted. TRANSPORT (default mpi) is what frugal runs over: mpi or ucx.
# Usage: methods_test.sh <mpirun> <frugal-bench> [TRANSPORT]
set -euo pipefail
mpirun=$1
bench=$2
transport=${3:-mpi}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
run=("$mpirun" --allow-run-as-root --oversubscribe)
# 8 B: PowerSGD's 2 x 1 matrix is reduced exactly; 400000 B = 100000 floats, a 400 x 250 matrix.
common=(--sizes 8,4K,64K,400000 --iters 2 --warmup 1 --ranks-check --algorithms mpi -q
        --transport "$transport")

for np in 2 3; do
  op=sum
  ((np == 3)) && op=average
  "${run[@]}" -np "$np" "$bench" "${common[@]}" --op "$op" \
    --methods powersgd,powersgd:4,topk:gtopk,topk:sparse_rd --json "$work/np$np.jsonl" \
    >"$work/np$np.txt"
done

# gTop-k of one element (4 B) and at density 1, where its sparse messages are larger than dense
# ones (once a truncated receive; on Open MPI's shared memory, a heap overwrite and a crash).
"${run[@]}" -np 3 "$bench" --sizes 4,4K --iters 2 --warmup 1 --ranks-check --algorithms mpi -q \
  --transport "$transport" --density 1 --methods topk:gtopk --json "$work/gtopk1.jsonl" \
  >"$work/gtopk1.txt"

hosts() {  # RANKS_ON_A RANKS_ON_B FRUGAL-BENCH-ARGS...
  local a=$1 b=$2
  shift 2
  "${run[@]}" -np "$a" env FRUGAL_HOST_ID=a "$bench" "$@" : -np "$b" env FRUGAL_HOST_ID=b \
    "$bench" "$@"
}
hosts 2 2 "${common[@]}" --methods dense:hierarchical,onebit:hierarchical,topk:hierarchical \
  --json "$work/hier.jsonl" >"$work/hier.txt"
grep -q "^# hierarchical rows: 2 host(s) x 2 ranks" "$work/hier.txt" ||
  { echo "FAIL: no 2 x 2 topology line in:" >&2; cat "$work/hier.txt" >&2; exit 1; }

rc=0
hosts 2 1 --sizes 4K --transport "$transport" --methods dense:hierarchical >"$work/bad.txt" 2>&1 || rc=$?
[[ $rc == 2 ]] || { echo "FAIL: unequal hosts exited $rc:" >&2; cat "$work/bad.txt" >&2; exit 1; }
grep -q "hosts hold different numbers of ranks" "$work/bad.txt" ||
  { echo "FAIL: unequal hosts, message:" >&2; cat "$work/bad.txt" >&2; exit 1; }

/usr/bin/python3 - "$work" "$transport" <<'PY'
import json, sys
work, transport = sys.argv[1:]
def rows(name):
    return [json.loads(l) for l in open(f"{work}/{name}.jsonl") if l.strip()]
for np, op in ((2, "sum"), (3, "average")):
    rs = rows(f"np{np}")
    assert len(rs) == 4 * 5, (np, len(rs))
    for r in rs:
        assert r["check"] == "ok" and r["wrong"] == 0, r
        assert r["ranks"] == np and r["op"] == op, r
        if r["method"] == "mpi":
            continue
        assert r["transport"] == transport, r
        assert r["wire_bytes_per_rank"] > 0, r
        if r["method"] == "powersgd":
            assert r["algorithm"] in ("rank1", "rank4"), r
            # Too small to compress at 8 B; compressed, and fewer bytes than a dense ring, from
            # 4K on (rank 1; rank 4 of a 32 x 32 matrix still pays).
            assert r["selected"] == (r["algorithm"] if r["bytes"] > 8 else "exact"), r
            assert r["encode_us"] is None, r
            if r["bytes"] >= 64 * 1024 or r["algorithm"] == "rank1" and r["bytes"] > 8:
                assert r["compression_ratio"] > 1, r
        else:
            assert r["method"] == "topk", r
            assert r["algorithm"] in ("gtopk", "sparse_rd"), r
            assert r["selected"] == "sparse_rd", r
gs = rows("gtopk1")
assert len(gs) == 2 * 2, len(gs)
for r in gs:
    assert r["check"] == "ok" and r["wrong"] == 0 and r["ranks"] == 3, r
    if r["method"] != "mpi":
        assert r["algorithm"] == "gtopk" and r["wire_bytes_per_rank"] > 0, r
hs = rows("hier")
assert len(hs) == 4 * 4, len(hs)
for r in hs:
    assert r["check"] == "ok" and r["wrong"] == 0 and r["ranks"] == 4, r
    if r["method"] == "mpi":
        continue
    assert r["transport"] == transport, r
    assert r["algorithm"] == "hierarchical" and r["compression_ratio"] is None, r
    # What crosses hosts: each rank's share, half the buffer (plus headers), or less when
    # compressed; at 8 B the headers are most of it.
    assert r["wire_bytes_per_rank"] > 0, r
    if r["method"] == "dense":
        assert r["rel_error"] == 0, r
        if r["bytes"] >= 4096:
            assert r["wire_bytes_per_rank"] <= r["bytes"] / 2 + 64, r
    elif r["bytes"] >= 4096:
        assert r["wire_bytes_per_rank"] < r["bytes"] / 2, r
print("methods ok")
PY
