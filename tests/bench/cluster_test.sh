#!/bin/bash
# bench/cluster/run at P = 2 over shaped links, frugal over MPI and over UCX (TCP across network
# namespaces): every result checked against the exact sum (--ranks-check), the rows must say so,
# the transport must be the one asked for, the shaping check must pass, and nothing the script
# created may be left behind. Exit 77 (meson's "skipped") when the machine cannot run it.
# Usage: cluster_test.sh <bench/cluster/run> <frugal-bench>
set -euo pipefail
run=$1
bench=$2

skip() {
  echo "SKIP: $*"
  exit 77
}
((EUID == 0)) || skip "needs root to create network namespaces (bench/cluster/run)"
command -v ip >/dev/null && command -v tc >/dev/null || skip "ip/tc (iproute2) not installed"
command -v unshare >/dev/null || skip "unshare (util-linux) not installed"
command -v mpirun >/dev/null || skip "mpirun not installed"
# What the cluster needs from the kernel, tried in a throw-away namespace: veth pairs, a bridge,
# the tbf qdisc and a UTS namespace (the launch agent gives each namespace its own host name).
probe="frugal-probe-$$"
ip netns add "$probe" 2>/dev/null || skip "'ip netns add' is not permitted here"
trap 'ip netns del "$probe" 2>/dev/null || true' EXIT
ip -n "$probe" link add name x0 type veth peer name x1 2>/dev/null || skip "no veth support in this kernel"
ip -n "$probe" link add name br0 type bridge 2>/dev/null || skip "no bridge support in this kernel"
ip netns exec "$probe" tc qdisc add dev x0 root tbf rate 1gbit burst 65536 limit 1000000 2>/dev/null ||
  skip "no tbf qdisc in this kernel"
unshare --uts true 2>/dev/null || skip "'unshare --uts' is not permitted here"
ip netns del "$probe"
trap - EXIT

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

after=$(ip netns list | sort)
if [[ $before != "$after" ]]; then
  echo "FAIL: network namespaces left behind:"
  diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
echo "ok: no namespace left behind"
