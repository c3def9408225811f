#!/bin/bash
# bench/train/cluster (frugal-train on a shaped cluster): its option errors (exit 2, naming the
# option) and bench/cluster/run's --mpirun-exec errors without root; then, where network
# namespaces can be made (skipped otherwise, exit 77), the whole script on a tiny configuration
# (2 ranks, ResNet-20 at 16x16, 2 steps (1 measured), the image folder made by the script; BMUF
# with H = 4 over 2 whole blocks after a first one): every row of the generated table must have a
# positive img/s, the step without gradient exchange must send nothing, 1-bit, top-1% and
# PowerSGD fewer bytes than dense, dense over UCX and over MPI the same bytes, and BMUF H = 4 a
# quarter of dense's bytes per step. --list: the BMUF rows' flags and step counts.
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
expect_usage_error "--rows: unknown row 'bmuf-h8'" "$script" --rows bmuf-h4,bmuf-h8
expect_usage_error "--blocks: '0' is not a whole number >= 1" "$script" --blocks 0
expect_usage_error "exclude each other" "$cluster" --exec --mpirun-exec -- true
expect_usage_error "--mpirun-exec needs a command" "$cluster" --mpirun-exec
"$script" --help | grep -q -- 'dense-mpi' || { echo "FAIL: --help lacks the rows"; exit 1; }
echo "ok: option errors"

# --list needs neither root nor a build. BMUF rows: whole blocks, skip rounded up to a block.
list=$("$script" --list --rows all --steps 10 --skip 2 --blocks 2 --batch-size 128)
expect_line() {  # expect_line <row> <text the row's command must contain>
  local line
  line=$(grep "^$1: " <<<"$list") || { echo "FAIL: --list lacks row $1: $list"; exit 1; }
  [[ $line == *"$2"* ]] || { echo "FAIL: row $1 lacks '$2': $line"; exit 1; }
}
expect_line bmuf-h4 "--limit-train 1536 --sync bmuf --block-steps 4 --log"
expect_line bmuf-h16 "--limit-train 6144 --sync bmuf --block-steps 16 --log"
expect_line bmuf-h4-onebit "--limit-train 1536 --sync bmuf --block-steps 4 --compress onebit --log"
expect_line bmuf-h4 "--exec -- "
expect_line bmuf-h4 "--transport ucx"
expect_line dense-ucx "--limit-train 1280 --log"
expect_line compute "--limit-train 1280 --sync bmuf --block-steps 11 --log"
list=$("$script" --list --rows bmuf-h16 --skip 17 --steps 20 --blocks 3)
expect_line bmuf-h16 "--limit-train $(((32 + 3 * 16) * 128)) --sync bmuf --block-steps 16"
list=$("$script" --list)
grep -q "^bmuf" <<<"$list" && { echo "FAIL: the default rows include BMUF: $list"; exit 1; }
echo "ok: --list"
if command -v flake8 >/dev/null; then
  flake8 "$(dirname "$script")/cluster_table.py" || { echo "FAIL: flake8"; exit 1; }
  echo "ok: cluster_table.py is flake8-clean"
fi

source "$(dirname "$0")/../support/netns_probe.sh" mpirun

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$script" --np 2 --rate 1gbit --model resnet20 --image-size 16 --batch-size 16 --steps 2 \
  --skip 1 --timeout 120 --build "$build" --data "$work/data" --out "$work/out" \
  --rows compute,dense-ucx,dense-mpi,onebit,topk1,powersgd,bmuf-h4
[[ -d $work/data/train && -d $work/data/val ]] || { echo "FAIL: no image folder made"; exit 1; }
/usr/bin/python3 - "$work/out/table.md" <<'PY'
import sys

text = open(sys.argv[1]).read()
labels = ["no gradient exchange", "dense, UCX", "dense, MPI", "1-bit", "top-1%",
          "PowerSGD", "BMUF H = 4, dense"]
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
# One allreduce of the parameters' delta per 4 steps against one of their
# gradients per step: a quarter of the bytes, measured over whole blocks.
quarter = wire["BMUF H = 4, dense"] / wire["dense, UCX"]
assert abs(quarter - 0.25) < 0.01, (quarter, wire)
assert abs(float(rows["dense, UCX"][7]) * 16 * 1e3 - wire["dense, UCX"] * 1e6) \
    < 16 * 100, rows["dense, UCX"]  # KB/image x batch = bytes/step (rounding)
assert rows["no gradient exchange"][9] == "1.00×", rows["no gradient exchange"]
assert rows["dense, UCX"][8] == "1.00×", rows["dense, UCX"]
assert "bmuf-h4: steps 5..12 of 12, 2 whole blocks of 4" in text, text
absent = [c for c in ("bmuf-h16", "H = 16") if c in text]
assert not absent, "rows not asked for are listed: %s" % absent
assert "resnet20, 2 ranks, links 1gbit" in text and "Load before:" in text, text
print("ok: %d rows, wire MB/step %s" % (len(rows), wire))
PY
