#!/bin/bash
# bench/cluster/run at P = 2 over shaped links, frugal over MPI and over UCX (TCP across network
# namespaces), then 2 namespaces x 2 ranks with the hierarchical rows over UCX: every result
# checked against the exact sum (--ranks-check), the rows must say so,
# the transport must be the one asked for, the shaping check must pass, and nothing the script
# created may be left behind. Exit 77 (meson's "skipped") when the machine cannot run it.
# Usage: cluster_test.sh <bench/cluster/run> <frugal-bench>
set -euo pipefail
run=$1
bench=$2

source "$(dirname "$0")/../support/netns_probe.sh" mpirun

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
before=$(ip netns list | sort)

for transport in mpi ucx; do
  json="$work/$transport.jsonl"
  echo "== cluster, P = 2, 1gbit, frugal over $transport"
  "$run" --np 2 --rate 1gbit --timeout 180 --transport "$transport" --bench "$bench" \
    --json "$json" -- --sizes 4K,256K --iters 3 --warmup 1 --ranks-check -q \
    --algorithms ring,auto,mpi --methods dense,fp16,topk,onebit,qsgd
  /usr/bin/python3 - "$json" "$transport" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
transport = sys.argv[2]
assert len(rows) == 2 * 7, "expected 14 rows (2 sizes x 7 methods), got %d" % len(rows)
for r in rows:
    assert r["ranks"] == 2, r
    assert r["check"] == "ok" and r["wrong"] == 0, r
    want = "mpi" if r["method"] == "mpi" else transport
    assert r["transport"] == want, (r["transport"], want)
print("ok: %d rows checked, frugal over %s" % (len(rows), transport))
PY
done

# 2 namespaces x 2 ranks over UCX: the hierarchical rows find the hosts themselves (hostname and
# network namespace), the ranks of a namespace reduce together and only the shares cross links.
json="$work/hier.jsonl"
echo "== cluster, 2 namespaces x 2 ranks, hierarchical rows over ucx"
"$run" --np 2 --ranks-per-host 2 --rate 1gbit --timeout 180 --transport ucx --bench "$bench" \
  --json "$json" -- --sizes 4K,256K --iters 2 --warmup 1 --ranks-check -q --algorithms mpi \
  --methods dense:hierarchical,onebit:hierarchical,topk:hierarchical | tee "$work/hier.txt"
grep -q "^# hierarchical rows: 2 host(s) x 2 ranks" "$work/hier.txt" ||
  { echo "FAIL: the namespaces were not found as 2 hosts of 2 ranks" >&2; exit 1; }
/usr/bin/python3 - "$json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hier = [r for r in rows if r["method"] != "mpi"]
assert len(hier) == 2 * 3, "expected 6 hierarchical rows (2 sizes x 3 methods), got %d" % len(hier)
for r in rows:
    assert r["ranks"] == 4, r
    assert r["check"] == "ok" and r["wrong"] == 0, r
print("ok: %d rows checked, 2 namespaces x 2 ranks" % len(rows))
PY

after=$(ip netns list | sort)
if [[ $before != "$after" ]]; then
  echo "FAIL: network namespaces left behind:"
  diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
echo "ok: no namespace left behind"
