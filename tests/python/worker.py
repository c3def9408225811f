"""One rank of the multi-process tests; run 2 of them under mpirun,
scripts/launch or torchrun (tests/python/run.py starts them).

    worker.py basic     results, overlap, zero-copy, Buckets, GIL
    worker.py bad       bad input on one rank: every rank raises at once
    worker.py kill      rank 1 dies mid-run: rank 0 raises, in time
    worker.py gloo      init_process_group("gloo") first, then basic

Each check prints "rank R: ok NAME"; any failure raises (exit code 1).
"""

import math
import os
import signal
import sys
import threading
import time

import numpy as np
import torch

import frugal
import frugal.torch
import guardrail_inputs

N = 4096
TIMEOUT = 30.0


def log(name, start):
    elapsed = time.monotonic() - start
    print(f"rank {frugal.rank()}: ok {name} ({elapsed:.2f} s)", flush=True)


def same_on_every_rank(t, what):
    """Bit-identical results: every rank's bytes equal rank 0's."""
    mine = t.numpy().tobytes() if isinstance(t, torch.Tensor) else \
        t.tobytes()
    everyone = frugal.allgather_object(mine)
    assert all(b == everyone[0] for b in everyone), \
        f"{what}: results differ between ranks"


def inputs(rank):
    g = torch.Generator().manual_seed(1234 + rank)
    return torch.randn(N, generator=g)


def cosine(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def check_dense():
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    t = torch.arange(N, dtype=torch.float32) * (r + 1)
    frugal.allreduce(t)
    factor = p * (p + 1) / 2
    assert torch.equal(t, torch.arange(N, dtype=torch.float32) * factor)
    t = torch.full((1000,), float(r + 1))
    for algorithm in ("auto", "ring", "rd", "rabenseifner"):
        t.fill_(float(r + 1))
        frugal.allreduce(t, op="average", algorithm=algorithm)
        assert torch.equal(t, torch.full((1000,), (p + 1) / 2)), algorithm
    a = np.full(10, r + 1, dtype=np.float32)
    assert frugal.allreduce(a) is a
    assert np.array_equal(a, np.full(10, factor, dtype=np.float32))
    log("dense sum and average, torch and numpy", start)


def check_compressed():
    start = time.monotonic()
    r = frugal.rank()
    everyone = [inputs(q) for q in range(frugal.size())]
    true = sum(everyone)
    C = frugal.Compression
    # The least a method's result must agree with the true sum.
    methods = [
        (C.fp16(), 0.9999), (C.bf16(), 0.999),
        (C.bf16(stochastic_rounding=True), 0.999),
        (C.topk(0.1), 0.55), (C.topk(k=100, selection="sampled"), 0.3),
        (C.onebit(), 0.45), (C.onebit("sign-means"), 0.5),
        (C.ternary(), 0.35), (C.qsgd(), 0.6), (C.qsgd(8, norm="max"), 0.999),
    ]
    for c, least in methods:
        t = inputs(r)
        frugal.allreduce(t, compression=c, error_feedback=False, seed=7)
        same_on_every_rank(t, repr(c))
        cos = cosine(t, true)
        assert cos >= least, f"{c!r}: cosine {cos:.3f} < {least}"
    # Exact top-k: the sum of every rank's own top-k selection.
    t = inputs(r)
    frugal.allreduce(t, compression=C.topk(k=50), error_feedback=False)
    expected = torch.zeros(N)
    for x in everyone:
        keep = x.abs().topk(50).indices
        expected[keep] += x[keep]
    assert torch.allclose(t, expected, rtol=0, atol=1e-6), "topk k=50"
    log("every compressed method, bit-identical on every rank", start)


def check_segments():
    """Per-tensor top-k over segments: every rank's selection from each
    segment (k_s = round(k * n_s / n)), summed; 1-bit with a scale per
    segment differs from one over the whole buffer."""
    start = time.monotonic()
    r = frugal.rank()
    segments = [N // 4, 7, N - N // 4 - 7]
    everyone = [inputs(q) for q in range(frugal.size())]
    for x in everyone:
        x[:segments[0]] *= 1e-3
    t = everyone[r].clone()
    frugal.allreduce(t, compression=frugal.Compression.topk(
        k=40, scope="per_tensor"), error_feedback=False, segments=segments)
    expected = torch.zeros(N)
    at = 0
    for n in segments:
        k = max(1, min(n, round(40 * n / N)))
        for x in everyone:
            keep = x[at:at + n].abs().topk(k).indices + at
            expected[keep] += x[keep]
        at += n
    assert torch.allclose(t, expected, rtol=0, atol=1e-6), "per_tensor"
    flat, split = everyone[r].clone(), everyone[r].clone()
    c = frugal.Compression.onebit()
    frugal.allreduce(flat, compression=c, error_feedback=False)
    frugal.allreduce(split, compression=c, error_feedback=False,
                     segments=segments)
    same_on_every_rank(split, "onebit with segments")
    assert not torch.equal(flat, split), "segments changed nothing"
    log("segments", start)


def check_error_feedback():
    start = time.monotonic()
    r = frugal.rank()
    true = sum(inputs(q) for q in range(frugal.size()))
    steps = 40

    def mean_error(c, feedback):
        state = frugal.State()
        total = torch.zeros(N)
        for _ in range(steps):
            t = inputs(r)
            frugal.allreduce(t, compression=c, state=state,
                             error_feedback=feedback)
            total += t
        assert state.steps == steps
        same_on_every_rank(total, f"{c!r}, error feedback {feedback}")
        return float((total / steps - true).norm() / true.norm())

    for c in (frugal.Compression.topk(0.05), frugal.Compression.onebit()):
        # What error feedback promises: what was dropped is sent later, so
        # the mean of the results approaches the true sum.
        with_ef, without = mean_error(c, True), mean_error(c, False)
        assert with_ef < 0.5 * without, \
            f"{c!r}: error {with_ef:.3f} with feedback, {without:.3f} without"
    log("error feedback over 40 steps", start)


def check_async_overlap():
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    big = torch.full((4 << 20,), float(r + 1))
    handle = frugal.allreduce_async(big)
    work = 0
    while not handle.done():
        work += 1
        sum(range(1000))
    assert handle.wait() is big
    assert torch.equal(big[:10], torch.full((10,), p * (p + 1) / 2))
    assert bool((big == p * (p + 1) / 2).all())
    # Several in flight, compressed with their states, then waited in turn.
    states = [frugal.State() for _ in range(3)]
    ts = [inputs(r) for _ in range(3)]
    hs = [frugal.allreduce_async(t, compression="qsgd:bits=8", state=s)
          for t, s in zip(ts, states)]
    for t, h in zip(ts, hs):
        assert h.wait() is t
    for t in ts:
        same_on_every_rank(t, "async qsgd")
    print(f"rank {r}: python work while the allreduce ran: {work} rounds",
          flush=True)
    log("allreduce_async overlapped with Python work", start)


def check_zero_copy():
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    whole = torch.zeros(100)
    view = whole[10:20]
    view.fill_(float(r + 1))
    assert frugal.allreduce(view) is view
    assert torch.equal(whole[10:20], torch.full((10,), p * (p + 1) / 2))
    assert torch.count_nonzero(whole) == 10
    rows = torch.zeros(4, 8)
    rows[2].fill_(1.0)
    frugal.allreduce(rows[2], op="sum")
    assert torch.equal(rows[2], torch.full((8,), float(p)))
    assert torch.count_nonzero(rows) == 8
    grad = torch.ones(16, requires_grad=True)
    frugal.allreduce(grad.data)
    assert torch.equal(grad.data, torch.full((16,), float(p)))
    log("zero-copy (contiguous views, .data)", start)


def check_broadcast_and_allgather():
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    for root in range(p):
        t = torch.full((33,), float(r))
        assert frugal.broadcast(t, root) is t
        assert torch.equal(t, torch.full((33,), float(root)))
    steps = torch.tensor([r * 10 + 1], dtype=torch.int64)
    frugal.broadcast(steps, root=p - 1)
    assert steps.item() == (p - 1) * 10 + 1
    got = frugal.allgather_object({"rank": r, "blob": "x" * (r * 1000)})
    assert got == [{"rank": q, "blob": "x" * (q * 1000)} for q in range(p)]
    frugal.barrier()
    log("broadcast, allgather_object, barrier", start)


def check_buckets():
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    sizes = {"conv1": 3000, "conv2": 5000, "fc": 2000, "bias": 10}

    def make():
        b = frugal.Buckets(compression=frugal.Compression.topk(0.1),
                           bucket_mb=0.03)
        for name, n in sizes.items():
            b.add(name, n)
        return b

    def grads(step):
        g = torch.Generator().manual_seed(100 * step + r)
        return {n: torch.randn(k, generator=g) for n, k in sizes.items()}

    b = make()
    for step in range(3):
        gs = grads(step)
        for name in reversed(list(sizes)):
            b.mark_ready(name, gs[name])
        b.finish()
        for name, g in gs.items():
            same_on_every_rank(g, f"bucket tensor {name}")
    assert b.tensor_count == 4 and b.bucket_count >= 2, b.bucket_count
    assert not b.last_step_skipped
    saved = b.state_dict()
    # A fresh Buckets restored from the checkpoint computes what the first
    # one computes next.
    b2 = make()
    b2.load_state_dict(saved)
    g1, g2 = grads(3), grads(3)
    for name in sizes:
        b.mark_ready(name, g1[name])
    b.finish()
    for name in sizes:
        b2.mark_ready(name, g2[name])
    b2.finish()
    for name in sizes:
        assert torch.equal(g1[name], g2[name]), name
    # Dense average: exact.
    d = frugal.Buckets(op="average")
    d.add("w", 100)
    w = torch.full((100,), float(r + 1))
    d.mark_ready(0, w)
    d.finish()
    assert torch.equal(w, torch.full((100,), (p + 1) / 2))

    # A vector (dims=1) under 1-bit travels dense by default: its average is
    # exact; with dense_vectors=False it is sign-compressed like the rest.
    def vector(rank):
        return torch.randn(64, generator=torch.Generator().manual_seed(rank))
    exact = sum(vector(k) for k in range(p)) / p
    for dense_vectors in (True, False):
        v = frugal.Buckets(compression="onebit", dense_vectors=dense_vectors)
        v.add("weight", 4096, dims=2)
        v.add("bias", 64, dims=1)
        bias = vector(r)
        v.mark_ready("bias", bias)
        v.mark_ready("weight", torch.randn(4096))
        v.finish()
        close = torch.allclose(bias, exact, rtol=1e-6, atol=1e-6)
        assert close == dense_vectors, (dense_vectors, bias, exact)
    log("Buckets with error feedback, state_dict round trip, dense vectors",
        start)


def check_guardrail():
    """Only rank 0's gradient holds the spike onebit cannot send, so only
    its own residual ratio climbs; the guardrail decides on the ratio of
    every rank's norms together, so both ranks move to fp16 at step 3
    with the same event, through Buckets and DistributedOptimizer, and
    the results stay bit-identical."""
    start = time.monotonic()
    r = frugal.rank()
    b = guardrail_inputs.buckets(frugal.Guardrail(
        0.5, 2.5, patience=100, smoothing=1.0, cooldown=3))
    events = []
    for s in range(6):
        g = guardrail_inputs.gradient(s, r == 0)
        b.mark_ready(0, g)
        b.finish()
        same_on_every_rank(g, f"guardrail step {s + 1}")
        assert b.bucket_setting(0) == ("fp16" if s + 1 >= 3 else "onebit")
        events += b.last_step_guardrail_events
    assert [(e["step"], e["from"], e["to"]) for e in events] == \
        [(3, "onebit", "fp16")], events
    everyone = frugal.allgather_object(events)
    assert all(e == everyone[0] for e in everyone), everyone

    p = torch.nn.Parameter(torch.zeros(64, N // 64))
    opt = frugal.torch.DistributedOptimizer(
        torch.optim.SGD([p], lr=0.01), [("w", p)], compression="onebit",
        bucket_mb=N * 4 / 2 ** 20, guardrail=guardrail_inputs.GUARD)
    events = []
    for s in range(5):
        opt.zero_grad()
        target = torch.from_numpy(guardrail_inputs.gradient(s, r == 0))
        (p * target.view(p.shape)).sum().backward()
        opt.step()
        events += opt.last_step_guardrail_events
    assert opt.guardrail_rungs == [1], opt.guardrail_rungs
    assert [e["step"] for e in events] == [3], events
    assert frugal.allgather_object(events) == [events] * frugal.size()
    same_on_every_rank(p.detach(), "guardrail DistributedOptimizer")
    log("guardrail: the ranks decide alike (Buckets, DistributedOptimizer)",
        start)


def guardrail_step(upper: float) -> None:
    """A guarded step; ranks passing another `upper` disagree."""
    b = guardrail_inputs.buckets(frugal.Guardrail(0.5, upper))
    b.mark_ready(0, guardrail_inputs.gradient(0, False))
    b.finish()


def autotune_buckets(cost, margin=0.1):
    """Two buckets of N floats under auto: warm-up 2, trials of 2 steps."""
    b = frugal.Buckets(autotune=frugal.Autotune(
        warmup=2, trial_steps=2, margin=margin, cost=cost),
        bucket_mb=N * 4 / 2 ** 20)
    b.add("w0", N)
    b.add("w1", N)
    return b


def autotune_step(b, step):
    r = frugal.rank()
    g = [inputs(r) * (step + 1), inputs(r + 7) - step]
    for i, t in enumerate(g):
        b.mark_ready(i, t)
    b.finish()
    return torch.cat(g)


def check_autotune():
    """Each rank's cost function prices the candidates (dense, fp16,
    ternary) its own way: rank 0 alone would keep dense on bucket 0, rank
    1 alone fp16; the agreed cost is the max over the ranks, so both keep
    ternary there, and fp16 on bucket 1. The moves, the decisions (with the
    agreed costs) and the results are identical on both ranks. A cost
    function returning NaN on rank 1 only fails that finish() on both,
    naming autotune.cost, and the communicator stays usable."""
    start = time.monotonic()
    r = frugal.rank()
    tables = [[[1.0, 9.0, 2.0], [3.0, 1.0, 1.0]],
              [[9.0, 1.0, 2.0], [3.0, 1.0, 5.0]]]
    agreed = [[max(t[b][c] for t in tables[:frugal.size()])
               for c in range(3)] for b in range(2)]
    b = autotune_buckets(lambda bucket, candidate, seconds:
                         tables[r % 2][bucket][candidate])
    events = []
    for s in range(10):
        result = autotune_step(b, s)
        same_on_every_rank(result, f"autotune step {s + 1}")
        events += b.last_step_autotune_events
    moves = [(e["step"], e["bucket"], e["from"], e["to"]) for e in events
             if not e["decision"]]
    assert moves == [(4, 0, "dense", "fp16"), (4, 1, "dense", "fp16"),
                     (6, 0, "fp16", "ternary"), (6, 1, "fp16", "ternary")], \
        moves
    decisions = [(e["step"], e["bucket"], e["to"], e["costs"])
                 for e in events if e["decision"]]
    assert decisions == [(8, 0, "ternary", agreed[0]),
                         (8, 1, "fp16", agreed[1])], decisions
    assert [b.bucket_candidate(i) for i in range(2)] == [2, 1]
    everyone = frugal.allgather_object(events)
    assert all(e == everyone[0] for e in everyone), everyone

    refused = autotune_buckets(lambda bucket, candidate, seconds:
                               math.nan if r == 1 else 1.0)
    try:
        autotune_step(refused, 0)
    except frugal.InvalidArgumentError as e:
        assert "autotune.cost" in str(e) and "rank 1" in str(e), str(e)
    else:
        raise AssertionError("a NaN cost on rank 1 was accepted")
    t = torch.ones(N)
    frugal.allreduce(t)
    assert torch.equal(t, torch.full((N,), float(frugal.size())))
    log("autotune: the ranks keep what the max of their costs says; a "
        "refused cost fails every rank", start)


def autotune_step_with(margin: float) -> None:
    """An auto step; ranks passing another margin disagree."""
    autotune_step(autotune_buckets(None, margin), 0)


def check_stats():
    start = time.monotonic()
    p = frugal.size()
    t = torch.ones(1000)
    h = frugal.allreduce_async(t, algorithm="ring")
    try:
        h.stats()
        raise AssertionError("stats() before wait() returned")
    except frugal.InvalidArgumentError as e:
        assert "wait()" in str(e), e
    h.wait()
    s = h.stats()
    assert s["algorithm"] == "ring", s
    # 2 (P-1)/P of the buffer, plus a 32-byte agreement block per
    # recursive-doubling round.
    rounds = (p - 1).bit_length()
    assert s["wire_bytes_sent"] == 2 * (p - 1) * 4000 // p + 32 * rounds, s
    assert not s["non_finite_skipped"] and s["comm_seconds"] >= 0, s
    c = frugal.allreduce_async(torch.ones(1 << 16), compression="onebit",
                               state=frugal.State())
    c.wait()
    sent = c.stats()["wire_bytes_sent"]
    assert 0 < sent < (1 << 16) * 4 // 16, c.stats()
    # Buckets count what their allreduces sent: one dense bucket of 1000
    # floats sends what one allreduce of them sends.
    b = frugal.Buckets()
    assert b.last_step_wire_bytes == 0
    b.add("w", 1000)
    b.mark_ready("w", torch.ones(1000))
    b.finish()
    d = frugal.allreduce_async(torch.ones(1000), op="average")
    d.wait()
    assert b.last_step_wire_bytes == d.stats()["wire_bytes_sent"] > 4000, \
        (b.last_step_wire_bytes, d.stats())
    log("allreduce statistics, Buckets' bytes per step", start)


def check_gil_released():
    start = time.monotonic()
    r = frugal.rank()
    if r != 0:
        time.sleep(1.5)  # rank 0 waits for this one inside allreduce
        frugal.allreduce(torch.ones(8))
        log("GIL released while waiting (the slow peer)", start)
        return
    count = [0]
    stop = threading.Event()

    def counter():
        while not stop.is_set():
            count[0] += 1
    thread = threading.Thread(target=counter)
    thread.start()
    time.sleep(0.05)
    before = count[0]
    t0 = time.monotonic()
    frugal.allreduce(torch.ones(8))
    waited = time.monotonic() - t0
    during = count[0] - before
    stop.set()
    thread.join()
    assert waited > 1.0, f"allreduce returned after {waited:.2f} s"
    assert during > 10000, f"the counting thread ran {during} times"
    print(f"rank 0: counted {during} times during a {waited:.2f} s wait",
          flush=True)
    log("GIL released while waiting", start)


# PowerSGD's tensors: two matrices worth compressing at rank 2 (one 4-D,
# viewed as 32 x 36), a vector and a matrix too small to pay: both exact.
PS_SHAPES = [(64, 48), (32, 4, 3, 3), (20,), (5, 3)]
PS_COMPRESSED = [True, True, False, False]


def check_sharded():
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    offset, count = frugal.shard_range(N)
    assert (offset, count) == (r * N // p, N // p), (offset, count)
    # Dense: the exact sum of this rank's shard, and every shard gathered.
    t = torch.arange(N, dtype=torch.float32) * (r + 1)
    shard = torch.empty(count)
    frugal.reduce_scatter(t, shard)
    factor = p * (p + 1) / 2
    want = torch.arange(N, dtype=torch.float32) * factor
    assert torch.equal(shard, want[offset:offset + count])
    out = torch.empty(N)
    frugal.allgather(shard, out)
    assert torch.equal(out, want)
    # Compressed, in place: equal to the two-phase allreduce, step by step.
    for method in ("onebit", "qsgd", "fp16"):
        states = [frugal.State() for _ in range(3)]
        for step in range(3):
            x = inputs(r) * (step + 1)
            whole = x.clone()
            mine = x[offset:offset + count]
            frugal.reduce_scatter(x, mine, compression=method,
                                  op="average", state=states[0])
            frugal.allgather(mine, x, compression=method, state=states[1])
            frugal.allreduce(whole, compression=method, op="average",
                             state=states[2], algorithm="two_phase")
            assert torch.equal(x, whole), (method, step)
            same_on_every_rank(x, f"allgather {method}")
    log("reduce_scatter and allgather: dense exact, compressed equal to "
        "the two-phase allreduce", start)


def ps_inputs(rank, step):
    g = torch.Generator().manual_seed(100 * step + rank)
    return [torch.randn(s, generator=g) for s in PS_SHAPES]


def ps_matrix(t):
    return t.double().reshape(t.shape[0] if t.dim() else 1, -1).numpy()


def mgs(p):
    """Modified Gram-Schmidt on p's columns, in double."""
    p = p.copy()
    for c in range(p.shape[1]):
        for k in range(c):
            p[:, c] -= (p[:, c] @ p[:, k]) * p[:, k]
        p[:, c] /= np.linalg.norm(p[:, c])
    return p


def check_powersgd_dense():
    """The first start_iter steps: the exact average, no state kept."""
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    state = frugal.PowerSGDState()
    for step in range(2):
        ts = ps_inputs(r, step)
        stats = frugal.powersgd_allreduce(ts, state, rank=2, start_iter=2)
        assert stats["dense_step"] and stats["compressed_tensors"] == 0, \
            stats
        for i, t in enumerate(ts):
            exact = sum(ps_inputs(q, step)[i] for q in range(p)) / p
            assert torch.allclose(t, exact, rtol=1e-6, atol=1e-7), i
            assert t.shape == PS_SHAPES[i]
    assert state.steps == 2 and state.bound, state
    # Bound: Q's first draw is kept for the tensors to be compressed.
    assert [state.q(i) is not None for i in range(len(PS_SHAPES))] == \
        PS_COMPRESSED
    assert state.q(0).shape == (48, 2) and state.q(1).shape == (36, 2)
    log("powersgd_allreduce: exact average before start_iter", start)


def check_powersgd():
    """Against a serial PowerSGD in numpy, step by step: P = sum M Q,
    orthonormalised; Q = mean M^T P; result P Q^T; residual M - P Q^T,
    with Q and every rank's residual read from the states."""
    start = time.monotonic()
    r, p = frugal.rank(), frugal.size()
    defaults = frugal.powersgd.POWERSGD_DEFAULTS
    assert defaults["rank"] >= 1 and defaults["op"] == "average", defaults
    state = frugal.PowerSGDState()
    ts = ps_inputs(r, 0)
    # numpy arrays are accepted as torch tensors are.
    arrays = [t.numpy() for t in ts]
    stats = frugal.powersgd_allreduce(arrays, state, rank=2, start_iter=0)
    assert not stats["dense_step"] and stats["compressed_tensors"] == 2, \
        stats
    assert stats["wire_bytes_sent"] > 0, stats
    image = None
    for step in range(1, 4):
        if step == 1:
            # Step 0 from Q's random draw: the result is this rank's
            # input less its residual, of rank 2.
            for i, t in enumerate(ts):
                same_on_every_rank(t, f"powersgd tensor {i}")
                res = state.residual(i)
                assert (res is not None) == PS_COMPRESSED[i], i
                if res is not None:
                    got = ps_matrix(t)
                    want = ps_matrix(ps_inputs(r, 0)[i]) - res
                    assert np.allclose(got, want, rtol=1e-5, atol=1e-5), i
                    assert np.linalg.matrix_rank(got, tol=1e-3) == 2, i
        qs = [state.q(i) for i in range(len(PS_SHAPES))]
        residuals = frugal.allgather_object(
            [state.residual(i) for i in range(len(PS_SHAPES))])
        if step == 3:
            image = state.save()
        ts = ps_inputs(r, step)
        frugal.powersgd_allreduce(ts, state, rank=2, start_iter=0)
        for i, t in enumerate(ts):
            same_on_every_rank(t, f"powersgd step {step} tensor {i}")
            grads = [ps_matrix(ps_inputs(q, step)[i]) for q in range(p)]
            if not PS_COMPRESSED[i]:
                want = sum(grads) / p
            else:
                ms = [g + residuals[q][i] for q, g in enumerate(grads)]
                big_p = mgs(sum(m @ qs[i] for m in ms))
                big_q = sum(m.T @ big_p for m in ms) / p
                want = big_p @ big_q.T
                assert np.allclose(state.q(i), big_q, rtol=1e-4,
                                   atol=1e-5), (step, i)
                assert np.allclose(state.residual(i), ms[r] - want,
                                   rtol=1e-4, atol=1e-4), (step, i)
            err = np.abs(ps_matrix(t) - want).max() / np.abs(want).max()
            assert err < 1e-5, (step, i, err)
    # A restored state repeats step 3 bit for bit.
    again = frugal.PowerSGDState()
    again.restore(image)
    assert again.steps == 3, again
    ts2 = ps_inputs(r, 3)
    frugal.powersgd_allreduce(ts2, again, rank=2, start_iter=0)
    assert all(torch.equal(a, b) for a, b in zip(ts, ts2))
    assert frugal.powersgd_compresses((64, 48), rank=2)
    assert not frugal.powersgd_compresses((20,), rank=2)
    log("powersgd_allreduce equals a serial reference; save/restore", start)


def basic():
    comm = frugal.init(timeout=TIMEOUT)
    assert comm.size == 2, comm.size
    expected = os.environ.get("FRUGAL_TEST_EXPECT_TRANSPORT")
    if expected:
        assert comm.transport == expected, comm.transport
    check_dense()
    check_compressed()
    check_segments()
    check_error_feedback()
    check_async_overlap()
    check_zero_copy()
    check_broadcast_and_allgather()
    check_buckets()
    check_guardrail()
    check_autotune()
    check_stats()
    check_gil_released()
    check_powersgd_dense()
    check_powersgd()
    check_sharded()
    frugal.shutdown()


def buckets_step(second: torch.Tensor) -> None:
    """A step of two compressed buckets; the second tensor is given."""
    b = frugal.Buckets(compression="topk", bucket_mb=0.001)
    b.add("first", N)
    b.add("second", N)
    b.mark_ready("first", torch.ones(N))
    b.mark_ready("second", second)
    b.finish()


def buckets_marked_twice() -> None:
    """A step of buckets_step's layout whose last tensor comes twice."""
    b = frugal.Buckets(compression="topk", bucket_mb=0.001)
    b.add("first", N)
    b.add("second", N)
    b.mark_ready("first", torch.ones(N))
    b.mark_ready("second", torch.ones(N))
    b.mark_ready("second", torch.ones(N))
    b.finish()


def buckets_then_allreduce() -> None:
    """The peer of buckets_marked_twice: its step ran every bucket, so it
    only learns of the rejection in its next collective."""
    buckets_step(torch.ones(N))
    frugal.allreduce(torch.ones(N))


def powersgd(tensors=None, rank=1):
    """One compressed PowerSGD step of `tensors` (default: 64 x 64)."""
    ts = tensors if tensors is not None else [torch.ones(64, 64)]
    frugal.powersgd_allreduce(ts, frugal.PowerSGDState(), rank=rank,
                              start_iter=0)


# Bad input on rank 1 only: (name, rank 1's call, words rank 1's error must
# hold, rank 0's call).
def bad_cases():
    t = torch.ones(N)
    dense = (lambda: frugal.allreduce(torch.ones(N)))
    topk = (lambda: frugal.allreduce(torch.ones(N), compression="topk",
                                     state=frugal.State()))
    return [
        ("float64", lambda: frugal.allreduce(t.double()),
         ["float64"], dense),
        ("non-contiguous", lambda: frugal.allreduce(
            torch.ones(N, 2)[:, 0]), ["not contiguous"], dense),
        ("float64 vs compressed", lambda: frugal.allreduce(
            t.double(), compression="topk", state=frugal.State()),
         ["float64"], topk),
        ("unknown method", lambda: frugal.allreduce(
            torch.ones(N), compression="zip", state=frugal.State()),
         ["zip"], topk),
        ("bad parameter", lambda: frugal.allreduce(
            torch.ones(N), compression="qsgd:bits=3", state=frugal.State()),
         ["bits"], lambda: frugal.allreduce(
             torch.ones(N), compression="qsgd:bits=4", state=frugal.State())),
        ("no state", lambda: frugal.allreduce(torch.ones(N),
                                              compression="topk"),
         ["state"], topk),
        ("async float64", lambda: frugal.allreduce_async(t.double()).wait(),
         ["float64"], lambda: frugal.allreduce_async(torch.ones(N)).wait()),
        ("broadcast non-contiguous", lambda: frugal.broadcast(
            torch.ones(N, 2)[:, 0]), ["contiguous"],
         lambda: frugal.broadcast(torch.ones(N))),
        ("size differs", lambda: frugal.allreduce(torch.ones(N + 1)),
         ["mismatch"], dense),
        ("buckets float64", lambda: buckets_step(t.double()),
         ["float64"], lambda: buckets_step(t)),
        ("buckets size differs", lambda: buckets_step(torch.ones(N + 1)),
         ["grad", str(N + 1)], lambda: buckets_step(t)),
        ("buckets marked twice", buckets_marked_twice,
         ["'second'", "already marked"], buckets_then_allreduce),
        ("guardrail options differ", lambda: guardrail_step(3.5),
         ["mismatch", "guardrail"], lambda: guardrail_step(3.0)),
        ("autotune options differ", lambda: autotune_step_with(0.2),
         ["mismatch", "autotune"], lambda: autotune_step_with(0.1)),
        ("method differs", lambda: frugal.allreduce(
            torch.ones(N), compression="onebit", state=frugal.State()),
         ["mismatch"], topk),
        ("powersgd float64", lambda: powersgd([t.view(64, -1),
                                               t.double().view(64, -1)]),
         ["tensors[1]", "float64"], powersgd),
        ("powersgd non-contiguous", lambda: powersgd(
            [t.view(64, -1).t()]), ["tensors[0]", "not contiguous"],
         powersgd),
        ("powersgd bad rank", lambda: powersgd(rank=0), ["rank"], powersgd),
        ("powersgd not a state", lambda: frugal.powersgd_allreduce(
            [torch.ones(64, 64)], frugal.State()), ["state"], powersgd),
        ("powersgd shared memory", lambda: powersgd([t.view(64, -1)] * 2),
         ["share memory"], powersgd),
        ("powersgd rank differs", lambda: powersgd(rank=2),
         ["mismatch", "rank r"], powersgd),
        ("powersgd shapes differ", lambda: powersgd([torch.ones(32, 128)]),
         ["mismatch", "shapes"], powersgd),
        ("reduce_scatter shard size", lambda: frugal.reduce_scatter(
            torch.ones(N), torch.ones(N // 2 - 1), compression="onebit",
            state=frugal.State()), ["output", str(N // 2 - 1)],
         lambda: frugal.reduce_scatter(
             torch.ones(N), torch.ones(N // 2), compression="onebit",
             state=frugal.State())),
        ("allgather float64 shard", lambda: frugal.allgather(
            torch.ones(N // 2).double(), torch.ones(N)), ["shard", "float64"],
         lambda: frugal.allgather(torch.ones(N // 2), torch.ones(N))),
    ]


def bad():
    for name, bad_call, words, good_call in bad_cases():
        frugal.init(timeout=TIMEOUT)
        r = frugal.rank()
        start = time.monotonic()
        try:
            (bad_call if r == 1 else good_call)()
        except frugal.Error as caught:
            elapsed = time.monotonic() - start
            e = caught
            text = str(e)
        else:
            raise AssertionError(f"{name}: rank {r} raised nothing")
        assert elapsed < TIMEOUT / 6, \
            f"{name}: rank {r} raised after {elapsed:.1f} s: {text}"
        if r == 1:
            for w in words:
                assert w in text, f"{name}: {w!r} not in {text!r}"
        else:
            assert isinstance(e, frugal.MismatchError), f"{name}: {e!r}"
        print(f"rank {r}: ok {name}: {type(e).__name__} after "
              f"{elapsed:.2f} s: {text}", flush=True)
        frugal.shutdown()


def kill():
    timeout = 5.0
    frugal.init(timeout=timeout)
    r = frugal.rank()
    t = torch.ones(1 << 16)
    frugal.allreduce(t)
    if r == 1:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    start = time.monotonic()
    try:
        for _ in range(1000):
            frugal.allreduce(t, compression="onebit", state=frugal.State())
    except (frugal.PeerFailureError, frugal.TimeoutError) as e:
        elapsed = time.monotonic() - start
        assert elapsed < 2 * timeout, f"after {elapsed:.1f} s: {e}"
        print(f"rank 0: ok survivor: {type(e).__name__} after "
              f"{elapsed:.2f} s: {e}", flush=True)
    else:
        raise AssertionError("the survivor raised nothing")
    # The communicator stays failed, with an error rather than a hang.
    try:
        frugal.barrier()
    except (frugal.PeerFailureError, frugal.TimeoutError):
        pass
    else:
        raise AssertionError("barrier on a failed communicator succeeded")
    frugal.shutdown()


def gloo():
    import torch.distributed as dist
    dist.init_process_group("gloo")
    basic()
    # frugal's keys went through torch.distributed's default store.
    store = dist.distributed_c10d._get_default_store()
    assert store.num_keys() > 2  # torch's own few, and frugal's
    assert len(store.get("frugal/0/0/1")) > 0
    # torch.distributed still works beside frugal.
    t = torch.ones(3)
    dist.all_reduce(t)
    assert torch.equal(t, torch.full((3,), 2.0))
    dist.destroy_process_group()


if __name__ == "__main__":
    {"basic": basic, "bad": bad, "kill": kill, "gloo": gloo}[sys.argv[1]]()
