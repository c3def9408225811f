#!/usr/bin/python3
"""The test suite's runner for the PyTorch examples: starts one on 2 ranks
and checks that both end with identical weights and a lower loss.

  check.py torchrun|mpirun|launch EXAMPLE.py [ARGS...]
"""
import os
import re
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LINE = re.compile(r"rank (\d+): weights (\S+), loss ([\d.]+) -> ([\d.]+)")


def command(launcher: str, script: str) -> list:
    python = "/usr/bin/python3"
    if launcher == "torchrun":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [python, os.path.join(ROOT, "scripts", "torchrun"),
                "--nproc_per_node", "2", "--master_port", str(port), script]
    if launcher == "mpirun":
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np",
                "2", python, script]
    return [os.path.join(ROOT, "scripts", "launch"), "-np", "2", python,
            script]


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = command(sys.argv[1], os.path.join(HERE, sys.argv[2]))
    cmd += sys.argv[3:]
    print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                         timeout=600).stdout
    print(out)
    # finditer: two ranks writing at once may share a line of the pipe
    found = [m.groups() for m in LINE.finditer(out)]
    assert sorted(int(f[0]) for f in found) == [0, 1], "no report of 2 ranks"
    hashes = {f[1] for f in found}
    assert len(hashes) == 1, "the ranks hold different weights: %s" % hashes
    for rank, _, first, last in found:
        assert float(last) < float(first), "rank %s: loss did not fall" % rank
    print("identical weights on both ranks, loss fell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
