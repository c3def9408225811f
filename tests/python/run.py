"""Starts 2 ranks of tests/python/worker.py under a launcher.

    run.py mpirun|launch|torchrun SCENARIO [--expect-killed]

The launcher's output is passed through. --expect-killed: rank 1 kills
itself, so the launcher's exit code is 137 (launch) and rank 0 must have
printed "ok survivor". A hard deadline ends a hung run with an error.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = "/usr/bin/python3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(launcher, scenario):
    worker = [PYTHON, str(HERE / "worker.py"), scenario]
    if launcher == "mpirun":
        return ["mpirun", "-np", "2", "--oversubscribe"] + worker
    if launcher == "launch":
        return [str(ROOT / "scripts" / "launch"), "-np", "2",
                "--grace", "20"] + worker
    return [PYTHON, str(ROOT / "scripts" / "torchrun"),
            "--nproc_per_node", "2",
            "--master_port", str(free_port())] + worker[1:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("launcher", choices=["mpirun", "launch", "torchrun"])
    p.add_argument("scenario")
    p.add_argument("--expect-killed", action="store_true")
    p.add_argument("--deadline", type=float, default=240)
    args = p.parse_args()
    proc = subprocess.Popen(command(args.launcher, args.scenario),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=args.deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        print(out)
        print(f"run.py: no end after {args.deadline} s: a hang")
        return 1
    print(out)
    if args.expect_killed:
        if proc.returncode != 128 + signal.SIGKILL:
            print(f"run.py: exit code {proc.returncode}, expected rank 1's "
                  f"{128 + signal.SIGKILL}")
            return 1
        if "rank 0: ok survivor" not in out:
            print("run.py: rank 0 did not report its error")
            return 1
        return 0
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
