#!/bin/bash
# Peer failure across network namespaces (a cluster on one machine, bench/cluster/run --exec):
# P = 3 ranks, one per namespace, over UCX/TCP; rank 1 SIGKILLs itself in the middle of a long
# allreduce loop (tests/ucx/peer_failure_worker). FRUGAL_UCX_WATCH_PEERS=0 turns off frugal's
# pidfd probe, which only works here because the namespaces share one kernel: across real hosts
# UCX alone must see the death.
#  1. auto (the default error mode): the endpoints between namespaces must use UCX's peer error
#     handling over TCP (no shared memory, no CMA, although UCX_TLS is not restricted), and every
#     survivor must exit with PeerFailure, naming rank 1, within 2 x FRUGAL_TIMEOUT.
#  2. auto, but the victim first takes its link down (FRUGAL_TEST_VICTIM_CMD), so it dies without
#     closing its TCP connections, as a crashed or unplugged host would: UCX 1.13 over TCP does
#     not see that within the deadline, so every survivor must leave with Timeout (or
#     PeerFailure) within 2 x FRUGAL_TIMEOUT. Measured and printed, a known limit.
#  3. callback (FRUGAL_UCX_ERROR_MODE=callback, UCX_TLS=tcp as its users must set between
#     namespaces), the former default, for comparison: each survivor must report PeerFailure or
#     Timeout within 2 x FRUGAL_TIMEOUT, or have been aborted by UCX itself (its v2 protocols
#     assert when a send meets an endpoint without error handling that broke, "stubs.c ...
#     Assertion"), which is counted and printed: the reason auto mode exists.
#  4. mixed, auto: 2 namespaces with 2 ranks each (P = 4), rank 3 SIGKILLed, pidfd probe on (the
#     default): endpoints within a namespace must be err_mode=none over shared memory (sysv or
#     posix) with CMA, those across must be err_mode=peer over TCP only; every survivor must exit
#     with PeerFailure naming rank 3 within 2 x FRUGAL_TIMEOUT.
# Exit 77 (meson's "skipped") when the machine cannot run it (not root, no netns/veth/unshare).
# Usage: cluster_peer_failure_test.sh <bench/cluster/run> <peer_failure_worker>
set -euo pipefail
run=$1
worker=$2
timeout_s=${FRUGAL_TEST_CLUSTER_TIMEOUT:-3}

skip() {
  echo "SKIP: $*"
  exit 77
}
((EUID == 0)) || skip "needs root to create network namespaces (bench/cluster/run)"
command -v ip >/dev/null && command -v tc >/dev/null || skip "ip/tc (iproute2) not installed"
command -v unshare >/dev/null || skip "unshare (util-linux) not installed"
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

scenario() {  # scenario <name> <expect: peer|silent|callback> <env settings...>
  local name=$1 expect=$2
  shift 2
  local out="$work/$name.out" status=0
  echo "== $name: P = 3 namespaces, rank 1 SIGKILLed, FRUGAL_TIMEOUT=$timeout_s s"
  env FRUGAL_TIMEOUT="$timeout_s" FRUGAL_TEST_VICTIM=1 FRUGAL_TEST_KILL_AFTER_MS=1500 \
    FRUGAL_UCX_WATCH_PEERS=0 FRUGAL_TEST_PRINT_ENDPOINTS=1 "$@" \
    "$run" --np 3 --rate 10gbit --timeout 40 --exec -- "$worker" >"$out" 2>&1 || status=$?
  /usr/bin/python3 - "$out" "$expect" "$timeout_s" "$name" <<'PY'
import re, sys
path, expect, timeout, name = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
text = open(path).read()
def fail(msg):
    print("FAIL [%s]: %s\n--- output ---\n%s" % (name, msg, text))
    sys.exit(1)
killed = re.search(r"VICTIM rank=1 killed_at=(\d+)", text)
if not killed:
    fail("the victim never reported its kill")
killed_at = int(killed.group(1))
if "FINISHED" in text:
    fail("a survivor finished the loop without an error")
if "# rank 1 exit status 137" not in text:
    fail("rank 1 did not die of SIGKILL")
endpoints = re.findall(r"ENDPOINT rank=(\d) peer=(\d) # frugal: err_mode=(\w+) \(peer ([^)]*)\) lanes:(.*)", text)
if len(endpoints) != 6:
    fail("expected 6 ENDPOINT lines (3 ranks x 2 peers), got %d" % len(endpoints))
for rank, peer, mode, where, lanes in endpoints:
    if where != "on another host or network namespace":
        fail("rank %s sees peer %s as '%s'" % (rank, peer, where))
    if expect == "peer" and mode != "peer":
        fail("auto mode gave the endpoint %s -> %s err_mode=%s, not peer" % (rank, peer, mode))
    if expect == "silent" and mode != "peer":
        fail("auto mode gave the endpoint %s -> %s err_mode=%s, not peer" % (rank, peer, mode))
    if expect == "callback" and mode != "none":
        fail("callback mode gave the endpoint %s -> %s err_mode=%s" % (rank, peer, mode))
    wires = lanes.split()
    if not wires or any(not w.startswith("tcp/") for w in wires):
        fail("endpoint %s -> %s uses %s, not TCP only" % (rank, peer, wires))
report = []
for survivor in (0, 2):
    status_line = text.split("# rank %d exit status " % survivor)[1].split("\n")[0]
    m = re.search(r"SURVIVOR rank=%d code=([a-z ]+) detected_at=(\d+) iterations=\d+ what=(.*)" % survivor, text)
    if not m and expect == "callback" and status_line == "134" and "Assertion" in text:
        report.append("rank %d aborted by UCX (assertion)" % survivor)
        continue
    if not m:
        fail("rank %d reported nothing" % survivor)
    code, seconds, what = m.group(1), (int(m.group(2)) - killed_at) / 1e9, m.group(3)
    report.append("rank %d %s after %.3f s" % (survivor, code, seconds))
    if seconds > 2 * timeout:
        fail("rank %d took %.3f s, more than 2 x %g s" % (survivor, seconds, timeout))
    if expect == "peer":
        if code != "peer failure":
            fail("rank %d reported '%s', not peer failure" % (survivor, code))
        if not re.search(r"peer 1\b", what):
            fail("rank %d's message does not name the dead rank 1: %s" % (survivor, what))
    elif code not in ("peer failure", "timeout"):
        fail("rank %d reported '%s'" % (survivor, code))
    if status_line != "3":
        fail("rank %d did not exit with the worker's error status 3" % survivor)
print("[%s] lanes: tcp only, err_mode %s; timeout %g s, bound %g s: %s" % (
    name, "none" if expect == "callback" else "peer", timeout, 2 * timeout, "; ".join(report)))
PY
}

mixed() {
  local out="$work/mixed.out" status=0
  echo "== mixed: 2 namespaces x 2 ranks, rank 3 SIGKILLed, FRUGAL_TIMEOUT=$timeout_s s"
  # Namespace k runs ranks 2k and 2k+1 (bench/cluster/run --exec gives it FRUGAL_RANK=k).
  env FRUGAL_TIMEOUT="$timeout_s" FRUGAL_TEST_VICTIM=3 FRUGAL_TEST_KILL_AFTER_MS=1500 \
    FRUGAL_TEST_PRINT_ENDPOINTS=1 \
    "$run" --np 2 --rate 10gbit --timeout 40 --exec -- /bin/sh -c '
      k=$FRUGAL_RANK
      FRUGAL_WORLD_SIZE=4 FRUGAL_RANK=$((2 * k)) "$0" &
      FRUGAL_WORLD_SIZE=4 FRUGAL_RANK=$((2 * k + 1)) "$0"
      wait' "$worker" >"$out" 2>&1 || status=$?
  /usr/bin/python3 - "$out" "$timeout_s" <<'PY'
import re, sys
path, timeout = sys.argv[1], float(sys.argv[2])
text = open(path).read()
def fail(msg):
    print("FAIL [mixed]: %s\n--- output ---\n%s" % (msg, text))
    sys.exit(1)
killed = re.search(r"VICTIM rank=3 killed_at=(\d+)", text)
if not killed:
    fail("the victim never reported its kill")
endpoints = re.findall(r"ENDPOINT rank=(\d) peer=(\d) # frugal: err_mode=(\w+) \(peer ([^)]*)\) lanes:(.*)", text)
if len(endpoints) != 12:
    fail("expected 12 ENDPOINT lines (4 ranks x 3 peers), got %d" % len(endpoints))
for rank, peer, mode, where, lanes in endpoints:
    wires = lanes.split()
    if int(rank) // 2 == int(peer) // 2:
        if mode != "none" or where != "on this host":
            fail("endpoint %s -> %s (one namespace): err_mode=%s, %s" % (rank, peer, mode, where))
        if not any(w.startswith(("sysv/", "posix/")) for w in wires) or not any(w.startswith("cma/") for w in wires):
            fail("endpoint %s -> %s (one namespace) uses %s, not shared memory + CMA" % (rank, peer, wires))
    else:
        if mode != "peer" or where != "on another host or network namespace":
            fail("endpoint %s -> %s (two namespaces): err_mode=%s, %s" % (rank, peer, mode, where))
        if not wires or any(not w.startswith("tcp/") for w in wires):
            fail("endpoint %s -> %s (two namespaces) uses %s, not TCP only" % (rank, peer, wires))
report = []
for survivor in (0, 1, 2):
    m = re.search(r"SURVIVOR rank=%d code=([a-z ]+) detected_at=(\d+) iterations=\d+ what=(.*)" % survivor, text)
    if not m:
        fail("rank %d reported nothing" % survivor)
    code, seconds, what = m.group(1), (int(m.group(2)) - int(killed.group(1))) / 1e9, m.group(3)
    report.append("rank %d %s after %.3f s" % (survivor, code, seconds))
    if code != "peer failure":
        fail("rank %d reported '%s', not peer failure" % (survivor, code))
    if seconds > 2 * timeout:
        fail("rank %d took %.3f s, more than 2 x %g s" % (survivor, seconds, timeout))
    if not re.search(r"peer 3 (is unreachable|\()", what):
        fail("rank %d's message does not name the dead rank 3: %s" % (survivor, what))
print("[mixed] lanes: shm+cma/none within a namespace, tcp/peer across; timeout %g s, bound %g s: %s" % (
    timeout, 2 * timeout, "; ".join(report)))
PY
}

scenario auto peer
scenario auto-silent silent FRUGAL_TEST_VICTIM_CMD="ip link set dev eth0 down"
scenario callback callback FRUGAL_UCX_ERROR_MODE=callback UCX_TLS=tcp
mixed
