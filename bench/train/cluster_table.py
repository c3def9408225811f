#!/usr/bin/python3
"""The table of bench/train/cluster's runs (OUT/<model>/<row>.jsonl).

Writes OUT/table.md. Per row, over the step records after the row's first
`skip` steps: images per second (images over wall time), seconds per step,
and the means per step of the trainer's compute (forward and backward, with
the hooks that hand gradients to the buckets), comm wait (end of backward to
reduced gradients; a BMUF row's block exchange), optimizer time and wire
bytes, per step and per image. Ratios are against dense over UCX (img/s) and
the step without gradient exchange (step time). A BMUF row's steps and skip
are whole blocks (run.json's "rows"); runs without that field use the run's
skip for every row.
"""
import json
import pathlib
import sys
from typing import Dict, List, Optional

ROWS = [
    ("compute", "no gradient exchange (compute bound)"),
    ("dense-ucx", "dense, UCX"),
    ("dense-mpi", "dense, MPI (baseline)"),
    ("onebit", "1-bit (`--compress onebit`)"),
    ("topk1", "top-1% (`--compress topk --density 0.01`)"),
    ("powersgd", "PowerSGD rank 1 (`--powersgd-start-iter 0`)"),
    ("bmuf-h4", "BMUF H = 4, dense delta (`--sync bmuf --block-steps 4`)"),
    ("bmuf-h16", "BMUF H = 16, dense delta (`--block-steps 16`)"),
    ("bmuf-h4-onebit", "BMUF H = 4, 1-bit delta (`--compress onebit`)"),
]


def steps_of(path: pathlib.Path, skip: int) -> List[Dict[str, float]]:
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("kind") == "step" and record["step"] > skip:
                records.append(record)
    return records


def mean(records: List[Dict[str, float]], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def summary(records: List[Dict[str, float]]) -> Dict[str, float]:
    elapsed = sum(r["elapsed_s"] for r in records)
    images = sum(r["global_batch"] * r["steps"] for r in records)
    steps = sum(r["steps"] for r in records)
    return {
        "img_s": images / elapsed,
        "step_s": elapsed / steps,
        "compute_s": sum(r["compute_s"] for r in records) / steps,
        "comm_s": sum(r["comm_wait_s"] for r in records) / steps,
        "opt_s": sum(r["optimizer_s"] for r in records) / steps,
        "wire": mean(records, "wire_bytes_per_step"),
        "steps": steps,
    }


def ratio(a: float, b: Optional[float]) -> str:
    return "—" if b is None or b <= 0 else "%.2f×" % (a / b)


def section(run_dir: pathlib.Path) -> List[str]:
    meta = json.loads((run_dir / "run.json").read_text())
    skip = int(meta["skip"])
    plans = meta.get("rows", {})
    found: Dict[str, Dict[str, float]] = {}
    for name, _ in ROWS:
        path = run_dir / (name + ".jsonl")
        if path.exists():
            records = steps_of(path, plans.get(name, {}).get("skip", skip))
            if records:
                found[name] = summary(records)
    dense = found.get("dense-ucx", {}).get("img_s")
    bound = found.get("compute", {}).get("step_s")
    lines = [
        "## %s, %s ranks, links %s, %s×%s images, global batch %s"
        % (meta["model"], meta["np"], meta["rate"], meta["image_size"],
           meta["image_size"], meta["batch"]),
        "",
        "Command: `%s` (started %s, %s cores)." % (
            meta["command"].strip(), meta["started"], meta["cores"]),
        "Load before: `%s`; after: `%s`." % (
            meta["uptime_before"].strip(), meta["uptime_after"].strip()),
        "Steps %d.. of %s per run (the first %d left out%s); times are rank "
        "0's means per step." % (
            skip + 1, meta["steps"], skip,
            "; BMUF rows: whole blocks, below"
            if any(p.get("block_steps", 0) for p in plans.values()) else ""),
        "",
        "| row | img/s | s/step | compute s | comm wait s | optimizer s "
        "| wire MB/step | wire KB/image | img/s ÷ dense UCX "
        "| step ÷ compute-only |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    batch = int(meta["batch"])
    blocks = []
    for name, label in ROWS:
        if name not in found:
            if name not in plans and name.startswith("bmuf"):
                continue  # not asked for: BMUF rows run only on request
            lines.append("| %s | absent |" % label + " |" * 8)
            continue
        s = found[name]
        lines.append(
            "| %s | %.1f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f | %s | %s |"
            % (label, s["img_s"], s["step_s"], s["compute_s"], s["comm_s"],
               s["opt_s"], s["wire"] / 1e6, s["wire"] / batch / 1e3,
               ratio(s["img_s"], dense), ratio(s["step_s"], bound)))
        plan = plans.get(name, {})
        if plan.get("block_steps", 0) > 0:
            h = plan["block_steps"]
            blocks.append("%s: steps %d..%d of %d, %d whole blocks of %d" % (
                name, plan["skip"] + 1, plan["steps"], plan["steps"],
                (plan["steps"] - plan["skip"]) // h, h))
    if blocks:
        lines += ["", "BMUF rows are measured over whole blocks (a block's "
                  "exchange falls in its last step), after the first "
                  "ceil(%d / H) blocks: %s. Wire bytes are rank 0's sends "
                  "averaged over those steps." % (skip, "; ".join(blocks))]
    if bound is not None and "dense-ucx" in found:
        extra = found["dense-ucx"]["step_s"] - bound
        lines += ["", "Dense over UCX spends %.3f s per step beyond the "
                  "compute-only step: %.2f× its %.3f s." % (
                      extra, extra / bound, bound)]
    return lines + [""]


def main() -> int:
    usage = ("usage: cluster_table.py OUT\n"
             "Writes OUT/table.md from the logs of bench/train/cluster "
             "(OUT/<model>/run.json and <row>.jsonl).")
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(usage)
        return 0
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    out = pathlib.Path(sys.argv[1])
    runs = sorted(p.parent for p in out.glob("*/run.json"))
    if not runs:
        print("cluster_table.py: no */run.json under %s" % out,
              file=sys.stderr)
        return 2
    lines = ["# frugal-train on a shaped cluster", "",
             "Generated by bench/train/cluster_table.py from the JSON logs of "
             "bench/train/cluster (docs/performance.md, \"Training on a "
             "shaped cluster\").", ""]
    for run_dir in runs:
        lines += section(run_dir)
    text = "\n".join(lines)
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
