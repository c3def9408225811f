#!/usr/bin/env bash
# The parameter-server results of docs/trainer.md: 4 workers, rank 1 slowed 2x (--straggler
# 1:2), synchronous SGD against --sync async-ps with one server and s in {1, 4, inf}; 2 short
# epochs of 4096 Fashion-MNIST images, same seed. Writes OUT/{sync,async-s1,async-s4,async-sinf}
# .{txt,jsonl}, OUT/run.json (the command, the layout, the load before and after) and
# OUT/table.md (bench/ps/table). With --cluster, every rank runs in a network namespace of its
# own behind a tc-shaped link (bench/cluster/run --exec; needs root), over UCX on TCP.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/ps/straggler.sh [options]

Trains ResNet-20 (--model) on 4,096 Fashion-MNIST images for 2 epochs (2,000 test images, global
batch 128, seed 1, one torch and one loader thread per rank) with rank 1 slowed 2x
(--straggler 1:2), once per run:
  sync        --sync sync on 4 ranks
  async-s1    --sync async-ps --servers 1 --staleness 1 on 5 ranks (4 workers, rank 4 the server)
  async-s4    the same with --staleness 4
  async-sinf  the same with --staleness inf
Without --cluster the ranks run under mpirun on this host (--transport auto: MPI). With
--cluster each rank gets a network namespace whose link is shaped to --rate (bench/cluster/run
--exec, one process per namespace, the server's link included), frugal over UCX with
UCX_TLS=tcp (the TCP-store bootstrap); the logs go to bench/results/ps-straggler-cluster.

Options:
  --cluster       run on the shaped cluster (needs root and ip netns)
  --rate RATE     --cluster: tc rate of every link (default 1gbit)
  --runs LIST     comma-separated subset of the runs above, in any order (default: all four)
  --model M       frugal-train --model (default resnet20)
  --out DIR       logs and table (default bench/results/ps-straggler, with --cluster
                  bench/results/ps-straggler-cluster; the environment's OUT if set)
  --train PATH    frugal-train (default build/trainer/frugal-train; the environment's TRAIN if set)
  --timeout SEC   --cluster: each run is killed after SEC seconds (default 900)
  --list          print the commands and exit
  -h, --help      this text
Exit status: 0 every run finished and the table was written, 1 a run failed (its .txt says why),
2 bad option, 4 --cluster cannot be made (not root).
EOF
}

die() {
  echo "bench/ps/straggler.sh: $*" >&2
  exit "${CODE:-2}"
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CLUSTER=0
RATE=1gbit
RUNS=sync,async-s1,async-s4,async-sinf
MODEL=resnet20
OUT_DIR=${OUT:-}
TRAIN_BIN=${TRAIN:-$repo/build/trainer/frugal-train}
TIMEOUT=900
LIST=0
ARGV=("$@")
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate|--runs|--model|--out|--train|--timeout)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --rate) RATE=$2 ;;
        --runs) RUNS=$2 ;;
        --model) MODEL=$2 ;;
        --out) OUT_DIR=$2 ;;
        --train) TRAIN_BIN=$2 ;;
        --timeout) TIMEOUT=$2 ;;
      esac
      shift 2 ;;
    --cluster) CLUSTER=1; shift ;;
    --list) LIST=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ $RATE =~ ^[0-9]+(bit|kbit|mbit|gbit)$ ]] || die "--rate: '$RATE' is not <integer>(bit|kbit|mbit|gbit)"
[[ $MODEL =~ ^[a-z0-9]+$ ]] || die "--model: '$MODEL' is not a model name"
[[ $TIMEOUT =~ ^[0-9]+$ ]] && ((TIMEOUT >= 1)) || die "--timeout: '$TIMEOUT' is not a whole number >= 1"
ALL_RUNS=(sync async-s1 async-s4 async-sinf)
IFS=, read -r -a SELECTED <<<"$RUNS"
((${#SELECTED[@]} > 0)) || die "--runs: empty"
for run in "${SELECTED[@]}"; do
  [[ " ${ALL_RUNS[*]} " == *" $run "* ]] || die "--runs: unknown run '$run' (one of ${ALL_RUNS[*]})"
done
if [[ -z $OUT_DIR ]]; then
  OUT_DIR=$repo/bench/results/ps-straggler
  ((CLUSTER == 0)) || OUT_DIR=$repo/bench/results/ps-straggler-cluster
fi

common=(--model "$MODEL" --limit-train 4096 --limit-val 2000 --epochs 2 --batch-size 128
        --ref-batch 128 --threads 1 --loader-threads 1 --no-progress --seed 1 --straggler 1:2)
run_command() {  # run_command <run>: sets CMD to the run's full command line
  local run=$1 np=4 mode=(--sync sync)
  if [[ $run != sync ]]; then
    np=5
    mode=(--sync async-ps --servers 1 --staleness "${run#async-s}")
  fi
  if ((CLUSTER)); then
    # UCX_TLS=tcp (set below): between namespaces of one host UCX would otherwise take shared
    # memory or CMA, around the shaped links.
    CMD=("$repo/bench/cluster/run" --np "$np" --rate "$RATE" --timeout "$TIMEOUT" --exec --
         "$TRAIN_BIN" --transport ucx)
  else
    CMD=(mpirun --allow-run-as-root --oversubscribe -np "$np" "$TRAIN_BIN")
  fi
  CMD+=("${common[@]}" "${mode[@]}" --log "$OUT_DIR/$run.jsonl")
}

if ((LIST)); then
  for run in "${SELECTED[@]}"; do
    run_command "$run"
    echo "$run: ${CMD[*]}"
  done
  exit 0
fi

[[ -x $TRAIN_BIN ]] || die "no frugal-train at $TRAIN_BIN (build it, or pass --train)"
if ((CLUSTER)); then
  CODE=4
  ((EUID == 0)) || die "--cluster: must run as root (bench/cluster/run creates network namespaces)"
  CODE=2
  export UCX_TLS=tcp
fi
# Before OMP_NUM_THREADS=1, which nproc would report instead of the machine's cores.
cores=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mkdir -p "$OUT_DIR"
# run.json below describes every log of this directory: logs of an earlier call must not be
# tabled under it.
rm -f "$OUT_DIR"/*.jsonl "$OUT_DIR"/*.txt
uptime_before=$(uptime)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
status=0
for run in "${SELECTED[@]}"; do
  run_command "$run"
  echo "== $run: ${CMD[*]}" | tee "$OUT_DIR/$run.txt" >&2
  if ! "${CMD[@]}" >>"$OUT_DIR/$run.txt" 2>&1; then
    echo "bench/ps/straggler.sh: run $run failed, see $OUT_DIR/$run.txt" >&2
    tail -5 "$OUT_DIR/$run.txt" >&2
    status=1
  fi
done
uptime_after=$(uptime)
if ((CLUSTER)); then
  layout="one rank per network namespace, every link shaped to $RATE (bench/cluster/run --exec), UCX over TCP; async runs: 4 workers and the server (rank 4) each behind its own link"
else
  layout="mpirun on one host (--transport auto: Open MPI); async runs: 4 workers and the server (rank 4)"
fi
/usr/bin/python3 - "$OUT_DIR/run.json" "$started" "$uptime_before" "$uptime_after" "$cores" \
  "$layout" "bench/ps/straggler.sh ${ARGV[*]}" <<'PY'
import json
import sys

keys = ["started", "uptime_before", "uptime_after", "cores", "layout", "command"]
with open(sys.argv[1], "w") as f:
    json.dump(dict(zip(keys, sys.argv[2:])), f, indent=1)
    f.write("\n")
PY
"$here/table" "$OUT_DIR" || { echo "bench/ps/straggler.sh: the table failed" >&2; exit 1; }
exit "$status"
