"""One of 4 ranks, two "hosts" of two (FRUGAL_HOST_ID=a for ranks 0-1, b
for 2-3; meson test python-hierarchical-2x2 runs it under mpirun),
checking frugal.Buckets(hierarchical=True) and DistributedOptimizer's
pass-through:

- dense: the exact sum of every rank's small-integer gradients, and fewer
  bytes between hosts than the flat run sends in all;
- onebit over 3 steps: bit-identical results on every rank, the dense
  (vector) bucket the sum, and well under the flat run's bytes;
- DistributedOptimizer(hierarchical=True, onebit): identical weights on
  every rank and the hierarchical byte count, not the flat one.

Each check prints "rank R: ok NAME"; a failure raises (exit code 1).
"""
from typing import List, Tuple

import numpy as np
import torch

import frugal
import frugal.torch

MATRIX = 6000
VECTOR = 200
STEPS = 3


def ok(name: str) -> None:
    print("rank %d: ok %s" % (frugal.rank(), name), flush=True)


def integers(rank: int, step: int, n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.int64)
    return ((i * 7 + rank * 13 + step) % 19 - 9).astype(np.float32)


def waves(rank: int, step: int, n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.float32)
    return np.sin(0.37 * i + 1.1 * rank + 0.5 * step).astype(np.float32)


def run(compression: str, hierarchical: bool, make
        ) -> Tuple[List[np.ndarray], List[np.ndarray], int]:
    """STEPS steps of a matrix and a vector tensor; the results after
    each, and the bytes every rank sent in all."""
    b = frugal.Buckets(compression=compression, op="sum",
                       hierarchical=hierarchical)
    b.add("w", MATRIX, 2)
    b.add("b", VECTOR, 1)
    ws, bs, sent = [], [], 0
    for s in range(STEPS):
        w = make(frugal.rank(), s, MATRIX + VECTOR)
        v = w[MATRIX:].copy()
        w = w[:MATRIX].copy()
        b.mark_ready("b", v)
        b.mark_ready("w", w)
        b.finish()
        sent += b.last_step_wire_bytes
        ws.append(w)
        bs.append(v)
    return ws, bs, sum(frugal.allgather_object(sent))


def same_everywhere(arrays: List[np.ndarray], what: str) -> None:
    mine = b"".join(a.tobytes() for a in arrays)
    assert all(x == mine for x in frugal.allgather_object(mine)), \
        "%s: the ranks hold different results" % what


def dense() -> None:
    ws, bs, hier = run("none", True, integers)
    _, _, flat = run("none", False, integers)
    for s in range(STEPS):
        want = sum(integers(r, s, MATRIX + VECTOR) for r in range(4))
        got = np.concatenate([ws[s], bs[s]])
        assert np.array_equal(got, want), "dense: not the exact sum"
    # Flat ring: 2 * 3/4 of the buffer per rank; hierarchical: 2 * 1/2
    # of each rank's half share crosses hosts, a third as much.
    assert 0 < 2 * hier < flat, "dense: %d bytes, flat %d" % (hier, flat)
    ok("dense: exact sums, %d bytes between hosts, flat %d" % (hier, flat))


def onebit() -> None:
    ws, bs, hier = run("onebit", True, waves)
    _, _, flat = run("onebit", False, waves)
    same_everywhere(ws + bs, "onebit")
    for s in range(STEPS):
        want = sum(waves(r, s, MATRIX + VECTOR)[MATRIX:] for r in range(4))
        assert np.allclose(bs[s], want, atol=1e-5), "onebit: dense bucket"
    assert 0 < 3 * hier < 2 * flat, \
        "onebit: %d bytes, flat %d" % (hier, flat)
    ok("onebit: bit-identical, %d bytes between hosts, flat %d"
       % (hier, flat))


def optimizer() -> None:
    sent = {}
    for hierarchical in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 32)
        opt = frugal.torch.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            model.named_parameters(), compression="onebit",
            hierarchical=hierarchical)
        torch.manual_seed(1 + frugal.rank())
        for _ in range(STEPS):
            opt.zero_grad()
            model(torch.randn(8, 64)).square().sum().backward()
            opt.step()
        same_everywhere([p.detach().numpy() for p in model.parameters()],
                        "optimizer hierarchical=%s" % hierarchical)
        sent[hierarchical] = sum(frugal.allgather_object(
            opt.wire_bytes_sent))
    assert 0 < 3 * sent[True] < 2 * sent[False], sent
    ok("DistributedOptimizer(hierarchical=True): %d bytes, flat %d"
       % (sent[True], sent[False]))


def main() -> None:
    torch.set_num_threads(1)
    frugal.init(timeout=30)
    assert frugal.size() == 4, frugal.size()
    dense()
    onebit()
    optimizer()
    frugal.shutdown()


if __name__ == "__main__":
    main()
