# Sourced (bash) by the tests that build a cluster of network namespaces with bench/cluster/run:
# exits 77 (meson's "skipped") with a message naming what is missing unless the machine can run
# one. What the cluster needs from the kernel is tried in a throw-away namespace: veth pairs, a
# bridge, the tbf qdisc and a UTS namespace (each namespace gets its own host name).
# Usage: source netns_probe.sh [extra commands that must exist...]
skip() {
  echo "SKIP: $*"
  exit 77
}
((EUID == 0)) || skip "needs root to create network namespaces (bench/cluster/run)"
command -v ip >/dev/null && command -v tc >/dev/null || skip "ip/tc (iproute2) not installed"
command -v unshare >/dev/null || skip "unshare (util-linux) not installed"
for netns_probe_cmd in "$@"; do
  command -v "$netns_probe_cmd" >/dev/null || skip "$netns_probe_cmd not installed"
done
netns_probe="frugal-probe-$$"
ip netns add "$netns_probe" 2>/dev/null || skip "'ip netns add' is not permitted here"
trap 'ip netns del "$netns_probe" 2>/dev/null || true' EXIT
ip -n "$netns_probe" link add name x0 type veth peer name x1 2>/dev/null ||
  skip "no veth support in this kernel"
ip -n "$netns_probe" link add name br0 type bridge 2>/dev/null ||
  skip "no bridge support in this kernel"
ip netns exec "$netns_probe" tc qdisc add dev x0 root tbf rate 1gbit burst 65536 limit 1000000 \
  2>/dev/null || skip "no tbf qdisc in this kernel"
unshare --uts true 2>/dev/null || skip "'unshare --uts' is not permitted here"
ip netns del "$netns_probe"
trap - EXIT
unset netns_probe netns_probe_cmd
