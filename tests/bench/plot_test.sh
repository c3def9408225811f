#!/bin/bash
# bench/plot on small generated results (JSON Lines and CSV with frugal-bench's fields): all three
# PNGs must exist and be PNG files (magic bytes, nonzero size); bad input must fail with exit 2.
# Exit 77 (meson's "skipped") without gnuplot.
# Usage: plot_test.sh <bench/plot>
set -euo pipefail
plot=$1
command -v gnuplot >/dev/null || { echo "SKIP: gnuplot not installed (Debian package gnuplot-nox)"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

/usr/bin/python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
fields = ["method", "algorithm", "selected", "transport", "ranks", "bytes", "median_us",
          "effective_gbps", "encode_us", "comm_us", "decode_us"]
rows = []
for size in (4096, 65536, 1048576):
    rows.append(["mpi", "MPI_Allreduce", "MPI_Allreduce", "mpi", 2, size, size / 1000.0,
                 1.0, None, None, None])
    rows.append(["dense", "auto", "ring" if size > 4096 else "recursive_doubling", "mpi", 2,
                 size, size / 1100.0, 1.1, 0, size / 1100.0, 0])
    rows.append(["onebit", "auto", "two_phase", "mpi", 2, size, size / 4000.0, 4.0,
                 size / 10000.0, size / 20000.0, size / 40000.0])
with open(work + "/r.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(dict(zip(fields, r))) + "\n")
with open(work + "/r.csv", "w") as f:
    f.write(",".join(fields) + "\n")
    for r in rows:
        f.write(",".join("" if v is None else str(v) for v in r) + "\n")
PY

for input in r.jsonl r.csv; do
  out="$work/out-$input"
  "$plot" --small "$work/$input" "$out" >/dev/null
  for png in time.png bandwidth.png breakdown.png; do
    file="$out/$png"
    [[ -s $file ]] || { echo "FAIL: $input: $png missing or empty"; exit 1; }
    magic=$(head -c 8 "$file" | od -An -tx1 | tr -d ' \n')
    [[ $magic == 89504e470d0a1a0a ]] || { echo "FAIL: $input: $png is not a PNG (magic $magic)"; exit 1; }
  done
  echo "ok: $input -> 3 PNGs"
done

# Compressed rows whose algorithm was asked for by name are their own lines; auto's are one line.
/usr/bin/python3 - "$plot" <<'PY'
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("plot", sys.argv[1])
plot = importlib.util.module_from_spec(importlib.util.spec_from_loader("plot", loader))
loader.exec_module(plot)
names = [plot.series_name({"method": "onebit", "algorithm": a, "ranks": 2}, False, False)
         for a in ("auto", "two_phase", "allgather")]
assert names == ["onebit", "onebit two phase", "onebit allgather"], names
print("ok: series names", names)
PY

echo "not a result" >"$work/bad.txt"
status=0
"$plot" "$work/bad.txt" "$work/bad" 2>/dev/null || status=$?
[[ $status == 2 ]] || { echo "FAIL: bad input gave exit $status, expected 2"; exit 1; }
status=0
"$plot" "$work/missing.jsonl" "$work/bad" 2>/dev/null || status=$?
[[ $status == 2 ]] || { echo "FAIL: missing input gave exit $status, expected 2"; exit 1; }
echo "ok: bad and missing input rejected"
