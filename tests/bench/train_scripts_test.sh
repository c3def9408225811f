#!/usr/bin/env bash
# bench/train/run's run names (NAME[-gamma1][-seedN]) and bench/train/table's reading of the logs
# they produce: every variant found, each compared with dense of the same seed and initialisation,
# means over seeds. No training: --list, and hand-written logs.
# Usage: train_scripts_test.sh BENCH_TRAIN_DIR
set -euo pipefail
dir=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

list() { "$dir/run" --list --train /bin/true --out "$tmp/list" --imagefolder "$tmp/folder" --runs "$1"; }
cmd=$(list b2048-nowarmup-gamma1-seed1)
for want in "--batch-size 2048" "--warmup-epochs 0" "--no-zero-init-residual" "--seed 1" \
    "--log $tmp/list/b2048-nowarmup-gamma1-seed1.jsonl"; do
  grep -q -- "$want" <<<"$cmd" || fail "b2048-nowarmup-gamma1-seed1: no '$want' in: $cmd"
done
[[ $(grep -o -- "--seed" <<<"$cmd" | wc -l) == 1 ]] || fail "two --seed in: $cmd"
cmd=$(list dense)
grep -q -- "--seed 0" <<<"$cmd" || fail "dense: no --seed 0 in: $cmd"
! grep -q -- "--no-zero-init-residual" <<<"$cmd" || fail "dense: γ from 1 in: $cmd"
# Issue 21's runs (not in the default series): each method's flags, nothing of another's.
check_cmd() {  # RUN WANT... (a leading ! : must not appear)
  local run=$1 c
  shift
  c=$(list "$run")
  for want in "$@"; do
    if [[ $want == !* ]]; then
      ! grep -q -- "${want#!}" <<<"$c" || fail "$run: '${want#!}' in: $c"
    else
      grep -q -- "$want" <<<"$c" || fail "$run: no '$want' in: $c"
    fi
  done
}
check_cmd powersgd "--compress powersgd" "!--powersgd-rank" "!--shard-optimizer"
check_cmd topk1-gtopk "--compress topk --density 0.01 --topk-gtopk on" "!--no-momentum-correction"
# frugal-train refuses --checkpoint-dir with --shard-optimizer (no sharded checkpoint yet).
check_cmd shard "--compress none --shard-optimizer" "!--checkpoint-dir"
check_cmd shard-onebit "--compress onebit --shard-optimizer" "!--checkpoint-dir"
check_cmd topk1-gtopk "--checkpoint-dir $tmp/list/ckpt/topk1-gtopk"
# Issue 19's batch-2048 and ResNet-18 runs: their own data set and model, each flag once.
check_cmd b2048-warmup-onebit "--batch-size 2048" "--warmup-epochs 2" "--compress onebit" \
  "--data fashion-mnist --model resnet20"
check_cmd r18-topk1 "--data imagefolder:$tmp/folder --image-size 32 --model resnet18" \
  "--compress topk --density 0.01" "!fashion-mnist" "!resnet20"
r18=$("$dir/run" --list --train /bin/true --out "$tmp/list" --runs r18-dense --imagefolder "$tmp/folder")
grep -q -- "--data imagefolder:$tmp/folder " <<<"$r18" || fail "r18-dense ignores --imagefolder: $r18"
[[ ! -e $tmp/folder ]] || fail "--list made the image folder"
default=$("$dir/run" --list --train /bin/true --out "$tmp/list")
for run in powersgd topk1-gtopk shard shard-onebit b2048-warmup-onebit r18-dense; do
  ! grep -q -- "--log $tmp/list/$run.jsonl" <<<"$default" || fail "$run is in the default series"
done

# Only the spellings the table reads: suffixes in order, once each, seeds without leading zeros.
for bad in dense-seed1-gamma1 dense-gamma1-gamma1 dense-seed1-seed2 dense-seed01 bogus bogus-gamma1; do
  rc=0
  msg=$(list "$bad" 2>&1) || rc=$?
  [[ $rc == 2 ]] || fail "$bad: exit $rc ($msg)"
  grep -q "unknown run '$bad'" <<<"$msg" || fail "$bad: message '$msg'"
done

# Logs: two epochs each; the table takes the last.
logs=$tmp/logs
mkdir -p "$logs"
write() {  # NAME TOP1_EPOCH0 TOP1_EPOCH1
  for e in 0 1; do
    local top1=$2
    ((e == 1)) && top1=$3
    printf '{"kind":"epoch","epoch":%d,"val_top1":%s,"elapsed_s":60,"images_per_sec":1000,"wire_bytes":2000,"steps":2,"wire_bytes_per_step":1000}\n' \
      "$e" "$top1" >>"$logs/$1.jsonl"
  done
}
write dense 0.80 0.9000
write dense-seed1 0.81 0.9100
write dense-gamma1 0.80 0.9200
write ternary-b128 0.70 0.8900
write ternary-b128-seed1 0.70 0.8800
write b2048-warmup-gamma1 0.60 0.9050
write b2048-nowarmup-gamma1 0.10 0.7000
write b2048-nowarmup-gamma1-seed1 0.10 0.7400
write dense-gamma1-seed1 0.80 0.9300
write powersgd 0.70 0.8950
write topk1-gtopk 0.70 0.8850
write shard 0.80 0.9010
write shard-onebit 0.70 0.8900
write r18-dense 0.80 0.9300
write r18-onebit 0.80 0.9250
table=$("$dir/table" "$logs")
row() { grep -F "| $1 |" <<<"$table" | head -1; }
check_row() {  # LABEL FIELD-TEXT...
  local label=$1 line
  shift
  line=$(row "$label")
  [[ -n $line ]] || fail "no row '$label' in:"$'\n'"$table"
  for want in "$@"; do
    grep -qF -- "$want" <<<"$line" || fail "row '$label' lacks '$want': $line"
  done
}
check_row "dense, residual γ from 1" "| 92.00% | — |"
check_row "dense, LR ×8, 2 warmup epochs, residual γ from 1" "| 90.50% | -1.50 |"
check_row "dense, LR ×8, no warmup, residual γ from 1" "| 70.00% | -22.00 |"
check_row "dense, LR ×8, no warmup, residual γ from 1, seed 1" "| 74.00% | -19.00 |"
check_row "ternary + EF, 128-element buckets" "| 89.00% | -1.00 |"
check_row "ternary + EF, 128-element buckets, seed 1" "| 88.00% | -3.00 |"
# Means over seeds: ternary 88.5 against dense 90.5; no-warmup γ from 1: 72.0 against 92.5.
check_row "ternary + EF, 128-element buckets | 0, 1" "| 88.50% (spread 1.00) | 90.50% | -2.00 |"
check_row "dense, LR ×8, no warmup, residual γ from 1 | 0, 1" "| 72.00% (spread 4.00) | 92.50% | -20.50 |"
check_row "PowerSGD rank 1 + EF, 10 dense steps" "| 89.50% | -0.50 |"
check_row "top-1% gTop-k + EF + momentum correction" "| 88.50% | -1.50 |"
check_row "dense, sharded optimizer (ZeRO-1)" "| 90.10% | +0.10 |"
check_row "1-bit + EF reduce-scatter, sharded optimizer" "| 89.00% | -1.00 |"
check_row "ResNet-18, 32 px image folder, 1-bit defaults" "| 92.50% | -0.50 |"
check_row "ResNet-18, 32 px image folder, dense" "| 93.00% | — |"
[[ -f $logs/table.md ]] || fail "no table.md written"
echo "train scripts ok"
