#!/bin/bash
# bench/train/cluster (frugal-train on a shaped cluster): its option errors (exit 2, naming the
# option) and bench/cluster/run's --mpirun-exec errors without root; then, where network
# namespaces can be made (skipped otherwise, exit 77), the whole script on a tiny configuration
# (2 ranks, ResNet-20 at 16x16, 2 steps (1 measured), the image folder made by the script): every row of
# the generated table must have a positive img/s, the step without gradient exchange must send
# nothing, 1-bit, top-1% and PowerSGD fewer bytes than dense, and dense over UCX and over MPI
# the same bytes.
# Usage: cluster_train_test.sh <bench/train/cluster> <bench/cluster/run> <build dir>
set -euo pipefail
script=$1
cluster=$2
build=$3

expect_usage_error() {  # expect_usage_error <text in the message> <command...>
  local want=$1 status=0 out
  shift
  out=$("$@" 2>&1) || status=$?
  if ((status != 2)) || [[ $out != *"$want"* ]]; then
    echo "FAIL: '$*' exited $status (want 2) with: $out (want '$want')"
    exit 1
  fi
}
expect_usage_error "unknown option '--bogus'" "$script" --bogus
expect_usage_error "--rows: unknown row 'dense'" "$script" --rows compute,dense
expect_usage_error "--skip: 3 leaves none" "$script" --steps 3 --skip 3
expect_usage_error "--batch-size: 10 is not a multiple of --np 4" "$script" --batch-size 10
expect_usage_error "--rate: 'fast'" "$script" --rate fast
expect_usage_error "--np needs a value" "$script" --np
expect_usage_error "exclude each other" "$cluster" --exec --mpirun-exec -- true
expect_usage_error "--mpirun-exec needs a command" "$cluster" --mpirun-exec
"$script" --help | grep -q -- 'dense-mpi' || { echo "FAIL: --help lacks the rows"; exit 1; }
echo "ok: option errors"
if command -v flake8 >/dev/null; then
  flake8 "$(dirname "$script")/cluster_table.py" || { echo "FAIL: flake8"; exit 1; }
  echo "ok: cluster_table.py is flake8-clean"
fi

source "$(dirname "$0")/../support/netns_probe.sh" mpirun

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$script" --np 2 --rate 1gbit --model resnet20 --image-size 16 --batch-size 16 --steps 2 \
  --skip 1 --timeout 120 --build "$build" --data "$work/data" --out "$work/out"
[[ -d $work/data/train && -d $work/data/val ]] || { echo "FAIL: no image folder made"; exit 1; }
/usr/bin/python3 - "$work/out/table.md" <<'PY'
import sys

text = open(sys.argv[1]).read()
labels = ["no gradient exchange", "dense, UCX", "dense, MPI", "1-bit", "top-1%",
          "PowerSGD"]
rows = {}
for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    for label in labels:
        if line.startswith("| " + label):
            rows[label] = cells
missing = [label for label in labels if label not in rows]
assert not missing, "rows missing: %s\n%s" % (missing, text)
for label, cells in rows.items():
    assert float(cells[1]) > 0, (label, cells)
wire = {label: float(cells[6]) for label, cells in rows.items()}
assert wire["no gradient exchange"] == 0, wire
assert wire["dense, UCX"] == wire["dense, MPI"] > 0, wire
for label in ("1-bit", "top-1%", "PowerSGD"):
    assert 0 < wire[label] < wire["dense, UCX"], (label, wire)
assert rows["no gradient exchange"][8] == "1.00×", rows["no gradient exchange"]
assert rows["dense, UCX"][7] == "1.00×", rows["dense, UCX"]
assert "resnet20, 2 ranks, links 1gbit" in text and "Load before:" in text, text
print("ok: %d rows, wire MB/step %s" % (len(rows), wire))
PY
