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
#     default). Each namespace also gets a pid namespace of its own (unshare --pid), as separate
#     hosts or containers have, so the probe only sees the ranks of its own namespace and a death
#     in the other one must be found by UCX. Endpoints within a namespace must be err_mode=none
#     over shared memory (sysv or posix) with CMA on UCX's v2 protocols, those across must be
#     err_mode=peer over TCP only on the v1 protocols (a context of their own: UCX 1.13's v2
#     protocols abort the process when a failed endpoint had sends queued); every survivor must
#     exit with PeerFailure naming rank 3 within 2 x FRUGAL_TIMEOUT.
#  5. mixed-silent: the same, but the victim first takes its namespace's link down (so rank 2,
#     alive, is cut off as well), then dies. This is what made UCX abort a survivor (2 of 2 runs)
#     when the cross-namespace endpoints ran on v2: now no rank may abort or hang; rank 2 (on the
#     victim's host, pidfd probe) must report PeerFailure naming rank 3, ranks 0 and 1 PeerFailure
#     or Timeout (nothing reaches them any more), all within 2 x FRUGAL_TIMEOUT, exit status 3.
# Exit 77 (meson's "skipped") when the machine cannot run it (not root, no netns/veth/unshare).
# FRUGAL_TEST_CLUSTER_SCENARIOS="mixed-silent ..." runs only those (default: all five, in order).
# Usage: cluster_peer_failure_test.sh <bench/cluster/run> <peer_failure_worker>
set -euo pipefail
run=$1
worker=$2
timeout_s=${FRUGAL_TEST_CLUSTER_TIMEOUT:-3}

source "$(dirname "$0")/../support/netns_probe.sh"
unshare --pid --fork true 2>/dev/null || skip "'unshare --pid' is not permitted here"

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
endpoints = re.findall(r"ENDPOINT rank=(\d) peer=(\d) # frugal: err_mode=(\w+) \(peer ([^)]*)\) protocols=v\d lanes:(.*)", text)
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

mixed() {  # mixed <name> [env settings...]
  local name=$1
  shift
  local out="$work/$name.out"
  echo "== $name: 2 namespaces x 2 ranks, rank 3 SIGKILLed, FRUGAL_TIMEOUT=$timeout_s s $*"
  # Namespace k runs ranks 2k and 2k+1 (bench/cluster/run --exec gives it FRUGAL_RANK=k) in a pid
  # namespace of its own; each rank's exit status is printed as "# mixed rank r status s".
  env FRUGAL_TIMEOUT="$timeout_s" FRUGAL_TEST_VICTIM=3 FRUGAL_TEST_KILL_AFTER_MS=1500 \
    FRUGAL_TEST_PRINT_ENDPOINTS=1 "$@" \
    "$run" --np 2 --rate 10gbit --timeout 40 --exec -- unshare --pid --fork --kill-child /bin/sh -c '
      k=$FRUGAL_RANK
      (FRUGAL_WORLD_SIZE=4 FRUGAL_RANK=$((2 * k)) "$0"; echo "# mixed rank $((2 * k)) status $?") &
      FRUGAL_WORLD_SIZE=4 FRUGAL_RANK=$((2 * k + 1)) "$0"; echo "# mixed rank $((2 * k + 1)) status $?"
      wait' "$worker" >"$out" 2>&1 || true
  /usr/bin/python3 - "$out" "$timeout_s" "$name" <<'PY'
import re, sys
path, timeout, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
silent = name.endswith("silent")
text = open(path).read()
def fail(msg):
    print("FAIL [%s]: %s\n--- output ---\n%s" % (name, msg, text))
    sys.exit(1)
killed = re.search(r"VICTIM rank=3 killed_at=(\d+)", text)
if not killed:
    fail("the victim never reported its kill")
if "Assertion" in text or "FINISHED" in text:
    fail("UCX aborted a rank (assertion), or a survivor finished the loop without an error")
status = dict(re.findall(r"# mixed rank (\d) status (\d+)", text))
if status.get("3") != "137":
    fail("rank 3 did not die of SIGKILL (status %s)" % status.get("3"))
endpoints = re.findall(r"ENDPOINT rank=(\d) peer=(\d) # frugal: err_mode=(\w+) \(peer ([^)]*)\) protocols=(v\d) lanes:(.*)", text)
if len(endpoints) != 12:
    fail("expected 12 ENDPOINT lines (4 ranks x 3 peers), got %d" % len(endpoints))
for rank, peer, mode, where, protocols, lanes in endpoints:
    wires = lanes.split()
    if int(rank) // 2 == int(peer) // 2:
        if mode != "none" or where != "on this host" or protocols != "v2":
            fail("endpoint %s -> %s (one namespace): err_mode=%s, %s, %s" % (rank, peer, mode, where, protocols))
        if not any(w.startswith(("sysv/", "posix/")) for w in wires) or not any(w.startswith("cma/") for w in wires):
            fail("endpoint %s -> %s (one namespace) uses %s, not shared memory + CMA" % (rank, peer, wires))
    else:
        if mode != "peer" or where != "on another host or network namespace" or protocols != "v1":
            fail("endpoint %s -> %s (two namespaces): err_mode=%s, %s, %s" % (rank, peer, mode, where, protocols))
        if not wires or any(not w.startswith("tcp/") for w in wires):
            fail("endpoint %s -> %s (two namespaces) uses %s, not TCP only" % (rank, peer, wires))
report = []
for survivor in (0, 1, 2):
    m = re.search(r"SURVIVOR rank=%d code=([a-z ]+) detected_at=(\d+) iterations=\d+ what=(.*)" % survivor, text)
    if not m:
        fail("rank %d reported nothing (exit status %s)" % (survivor, status.get(str(survivor))))
    code, seconds, what = m.group(1), (int(m.group(2)) - int(killed.group(1))) / 1e9, m.group(3)
    report.append("rank %d %s after %.3f s" % (survivor, code, seconds))
    if seconds > 2 * timeout:
        fail("rank %d took %.3f s, more than 2 x %g s" % (survivor, seconds, timeout))
    if status.get(str(survivor)) != "3":
        fail("rank %d exited with status %s, not the worker's error status 3" % (survivor, status.get(str(survivor))))
    # Cut off with the victim, ranks 0 and 1 can only time out; the victim's neighbour sees it die.
    if silent and survivor != 2:
        if code not in ("peer failure", "timeout"):
            fail("rank %d reported '%s'" % (survivor, code))
        continue
    if code != "peer failure":
        fail("rank %d reported '%s', not peer failure" % (survivor, code))
    if not re.search(r"peer 3 (is unreachable|\()", what):
        fail("rank %d's message does not name the dead rank 3: %s" % (survivor, what))
print("[%s] lanes: shm+cma/none/v2 within a namespace, tcp/peer/v1 across; no abort; timeout %g s, bound %g s: %s" % (
    name, timeout, 2 * timeout, "; ".join(report)))
PY
}

link_down="ip link set dev eth0 down"
for name in ${FRUGAL_TEST_CLUSTER_SCENARIOS:-auto auto-silent callback mixed mixed-silent}; do
  case $name in
    auto) scenario auto peer ;;
    auto-silent) scenario auto-silent silent FRUGAL_TEST_VICTIM_CMD="$link_down" ;;
    callback) scenario callback callback FRUGAL_UCX_ERROR_MODE=callback UCX_TLS=tcp ;;
    mixed) mixed mixed ;;
    mixed-silent) mixed mixed-silent FRUGAL_TEST_VICTIM_CMD="$link_down" ;;
    *) echo "unknown scenario '$name' in FRUGAL_TEST_CLUSTER_SCENARIOS" >&2; exit 2 ;;
  esac
done
