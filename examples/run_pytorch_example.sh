#!/bin/bash
# Runs pytorch_ctypes.py on 2 ranks and checks the outcome: every rank reports the same weight
# hash (data parallelism kept the replicas identical) and a last loss below half the first.
#
# Usage: run_pytorch_example.sh mpi|launch LIBFRUGAL SOURCE_DIR OUT_DIR [--method M ...]
set -euo pipefail
if [[ ${1:-} == --help || $# -lt 4 ]]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  [[ ${1:-} == --help ]] && exit 0 || exit 2
fi
how=$1 lib=$2 source=$3 out=$4
shift 4
rm -rf "$out"
mkdir -p "$out"
script=$source/examples/pytorch_ctypes.py
case $how in
  mpi) mpirun --allow-run-as-root --oversubscribe -np 2 /usr/bin/python3 "$script" --lib "$lib" --out "$out" "$@" ;;
  launch) "$source/scripts/launch" -np 2 /usr/bin/python3 "$script" --lib "$lib" --bootstrap env --out "$out" "$@" ;;
  *) echo "run_pytorch_example: unknown launcher '$how'" >&2; exit 2 ;;
esac
/usr/bin/python3 - "$out" <<'PY'
import sys
reports = [open("%s/rank%d.txt" % (sys.argv[1], r)).read().split() for r in range(2)]
hashes = {r[reports[0].index("weights") + 1] for r in reports}
assert len(hashes) == 1, "ranks hold different weights: %s" % hashes
for r in reports:
    first, last = float(r[-2]), float(r[-1])
    assert last < 0.5 * first, "rank %s did not learn: loss %g -> %g" % (r[1], first, last)
    assert int(r[r.index("buckets") + 1]) > 1, "the model should span several buckets"
print("identical weights on both ranks:", hashes.pop())
PY
