#!/usr/bin/env bash
# The parameter-server results of docs/trainer.md: 4 workers, rank 1 slowed 2x (--straggler
# 1:2), synchronous SGD against --sync async-ps with one server and s in {1, 4, inf}; 2 short
# epochs of 4096 Fashion-MNIST images, same seed. Writes OUT/{sync,async-s1,async-s4,async-sinf}
# .{txt,jsonl} and OUT/table.md (bench/ps/table). Usage (from the source root, after the build):
# bench/ps/straggler.sh
set -euo pipefail
train=${TRAIN:-build/trainer/frugal-train}
out=${OUT:-bench/results/ps-straggler}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
common=(--model resnet20 --limit-train 4096 --limit-val 2000 --epochs 2 --batch-size 128
        --ref-batch 128 --threads 1 --loader-threads 1 --no-progress --seed 1 --straggler 1:2)
mpirun --allow-run-as-root --oversubscribe -np 4 "$train" "${common[@]}" --sync sync \
  --log "$out/sync.jsonl" >"$out/sync.txt" 2>&1
for s in 1 4 inf; do
  mpirun --allow-run-as-root --oversubscribe -np 5 "$train" "${common[@]}" --sync async-ps \
    --servers 1 --staleness $s --log "$out/async-s$s.jsonl" >"$out/async-s$s.txt" 2>&1
done
bench/ps/table "$out"
