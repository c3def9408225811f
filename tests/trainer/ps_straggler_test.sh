#!/bin/bash
# bench/ps/straggler.sh (the parameter-server straggler results, docs/trainer.md) and its table,
# without training: option errors exit 2 naming the option; --list prints the runs' commands
# (mpirun on one host, or with --cluster one rank per shaped namespace over UCX with the server
# as a fifth rank); bench/ps/table computes throughput, accuracy and staleness from hand-written
# epoch records and heads the table with run.json's command and load.
# Usage: ps_straggler_test.sh <bench/ps/straggler.sh> <bench/ps/table>
set -euo pipefail
script=$1
table=$2

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
expect_usage_error "--runs: unknown run 'async-s2'" "$script" --runs sync,async-s2
expect_usage_error "--rate: 'fast'" "$script" --cluster --rate fast
expect_usage_error "--timeout: '0'" "$script" --timeout 0
expect_usage_error "--out needs a value" "$script" --out
"$script" --help | grep -q -- '--cluster' || { echo "FAIL: --help lacks --cluster"; exit 1; }
echo "ok: option errors"

expect_line() {  # expect_line <listing> <run> <text the run's command must contain>
  local line
  line=$(grep "^$2: " <<<"$1") || { echo "FAIL: no run $2 in: $1"; exit 1; }
  [[ $line == *"$3"* ]] || { echo "FAIL: run $2 lacks '$3': $line"; exit 1; }
}
list=$("$script" --list --train /x/frugal-train --out /o)
expect_line "$list" sync "mpirun --allow-run-as-root --oversubscribe -np 4 /x/frugal-train "
expect_line "$list" sync "--straggler 1:2 --sync sync --log /o/sync.jsonl"
expect_line "$list" async-s4 "-np 5 /x/frugal-train "
expect_line "$list" async-s4 "--sync async-ps --servers 1 --staleness 4 --log /o/async-s4.jsonl"
expect_line "$list" async-sinf "--staleness inf"
list=$("$script" --list --cluster --runs async-s1,sync --train /x/frugal-train)
[[ $(wc -l <<<"$list") == 2 ]] || { echo "FAIL: --runs not honoured: $list"; exit 1; }
expect_line "$list" sync "/bench/cluster/run --np 4 --rate 1gbit --timeout 900 --exec -- /x/frugal-train --transport ucx "
expect_line "$list" async-s1 "/bench/cluster/run --np 5 --rate 1gbit "
expect_line "$list" async-s1 "--staleness 1 --log "
expect_line "$list" async-s1 "/bench/results/ps-straggler-cluster/async-s1.jsonl"
list=$("$script" --list --cluster --rate 200mbit --runs sync)
expect_line "$list" sync "--rate 200mbit"
echo "ok: --list"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Two epochs of 10 steps of 128 images: 1280 images in 2 s then in 3 s: 2560 / 5 = 512 images/s.
for name in sync async-s1; do
  {
    echo '{"kind":"step","epoch":0,"step":1,"global_batch":128,"steps":1}'
    echo '{"kind":"epoch","epoch":0,"steps":10,"global_batch":128,"images_per_sec":640,"val_top1":0.5,"staleness_max":1,"staleness_mean":0.5}'
    echo '{"kind":"epoch","epoch":1,"steps":10,"global_batch":128,"images_per_sec":426.6666666667,"val_top1":0.625,"staleness_max":1,"staleness_mean":0.75}'
  } >"$work/$name.jsonl"
done
sed -i 's/,"staleness_max":1,"staleness_mean":0.[0-9]*//' "$work/sync.jsonl"
cat >"$work/run.json" <<'EOF'
{"started": "2026-01-01T00:00:00Z", "uptime_before": "load average: 1.00",
 "uptime_after": "load average: 2.00", "cores": "2", "layout": "test layout",
 "command": "bench/ps/straggler.sh --cluster"}
EOF
"$table" "$work" >/dev/null
/usr/bin/python3 - "$work/table.md" <<'PY'
import sys

text = open(sys.argv[1]).read()
assert "Repeat 1: `bench/ps/straggler.sh --cluster`" in text, text
assert "cores); test layout; load" in text, text
assert "load average: 1.00" in text and "load average: 2.00" in text, text
rows = {}
for line in text.splitlines():
    if line.startswith("| 1 |"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[1]] = cells[2:]
assert rows["images/s"] == ["512", "512", "–", "–"], rows
assert rows["test top-1"] == ["62.5%", "62.5%", "–", "–"], rows
assert rows["staleness max / mean"] == ["–", "1 / 0.75", "–", "–"], rows
print("ok: table", rows)
PY
if command -v flake8 >/dev/null; then
  flake8 "$table" || { echo "FAIL: flake8"; exit 1; }
  echo "ok: bench/ps/table is flake8-clean"
fi
