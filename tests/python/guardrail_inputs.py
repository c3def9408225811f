"""Shared by the guardrail tests (test_guardrail.py in one process,
worker.py on 2 ranks): gradients that drive the guardrail the way
tests/compressed/guardrail_test.cpp does, and the options that make its
decisions land on known steps.

±1 everywhere, which onebit (mean-abs scaling) sends exactly; a spike of
1000 in element 0, which it cannot: the residual then grows by about 1000
a step against an input norm of about 1000, a ratio of about 1, 2, 3 after
steps 1, 2, 3. With GUARD (bounds 0.5 and 2.5, cooldown 3, smoothing 1:
each step's ratio as it is) step 3 moves the bucket to fp16, which sends
the spike with a ratio of ~1e-3, and 10 calm steps later (patience) it
comes back down to onebit.
"""
import numpy as np

import frugal
from frugal.guardrail import GuardrailLike

N = 4096
GUARD = frugal.Guardrail(0.5, 2.5, patience=10, smoothing=1.0, cooldown=3)


def gradient(step: int, spike: bool) -> np.ndarray:
    g = np.where((np.arange(N) * 7 + step) % 3 == 0, -1.0, 1.0)
    g = g.astype(np.float32)
    if spike:
        g[0] = 1000.0
    return g


def buckets(guardrail: GuardrailLike = GUARD) -> frugal.Buckets:
    """onebit with error feedback over one bucket of N floats."""
    b = frugal.Buckets(compression="onebit", bucket_mb=N * 4 / 2 ** 20,
                       guardrail=guardrail)
    b.add("w", N)
    return b
