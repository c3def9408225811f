"""compression = auto through the package in one process (world size 1
over an in-memory store): frugal.Autotune's defaults (the C++ header's)
and refusals by name, frugal.Buckets following the schedule (warm-up, then
trial_steps per candidate) to the candidate a cost function makes
cheapest, the cost function's refusals as InvalidArgumentError naming
autotune.cost, state_dict round trips and DistributedOptimizer passing it
on. The 2-rank checks (the ranks agree on the max of their costs; other
options are a mismatch) are in worker.py.
"""
import math
import pickle
import re
import unittest
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

import frugal
import frugal.torch
from one_rank import OneRankCase

SOURCE_ROOT = Path(__file__).resolve().parents[2]
N = 4096
# Bucket 0 is cheapest on fp16, bucket 1 on ternary.
TABLE = [[5.0, 1.0, 4.0], [5.0, 4.0, 1.0]]


def header_defaults() -> dict:
    """AutotuneOptions' defaults as autotune.hpp spells them."""
    text = (SOURCE_ROOT / "collectives" / "include" / "frugal" /
            "collectives" / "autotune.hpp").read_text()
    found = dict(re.findall(
        r"(?:double|std::size_t) (warmup|trial_steps|retune|margin)"
        r" = ([0-9.]+);", text))
    assert len(found) == 4, found
    return {k: (float(v) if k == "margin" else int(v))
            for k, v in found.items()}


def flat_cost(bucket: int, candidate: int, seconds: float) -> float:
    """Module-level, so that an Autotune holding it pickles."""
    return 1.0


class Recorder:
    """A cost function from a table, recording its calls."""

    def __init__(self, table: List[List[float]]) -> None:
        self.table = table
        self.step = 0
        self.calls: List[Tuple[int, int, int]] = []

    def __call__(self, bucket: int, candidate: int, seconds: float) -> float:
        assert isinstance(seconds, float) and seconds >= 0, seconds
        self.calls.append((self.step, bucket, candidate))
        return self.table[bucket][candidate]


def gradient(step: int, tensor: int) -> np.ndarray:
    i = np.arange(N, dtype=np.float32)
    return np.sin(0.01 * i * (tensor + 1) + step).astype(np.float32)


def two_buckets(autotune: Any, **kwargs: Any) -> frugal.Buckets:
    b = frugal.Buckets(autotune=autotune, bucket_mb=N * 4 / 2 ** 20,
                       **kwargs)
    b.add("w0", N)
    b.add("w1", N)
    return b


def step(b: frugal.Buckets, s: int) -> np.ndarray:
    g0, g1 = gradient(s, 0), gradient(s, 1)
    b.mark_ready(0, g0)
    b.mark_ready(1, g1)
    b.finish()
    return np.concatenate([g0, g1])


class AutotuneTest(OneRankCase):
    def test_defaults_are_the_librarys(self) -> None:
        a = frugal.Autotune()
        for name, value in header_defaults().items():
            self.assertEqual(getattr(a, name), value, name)
        self.assertIsNone(a.candidates)
        self.assertIsNone(a.cost)
        given = frugal.Autotune(["none", "topk:density=0.1"], 3, 2, 7, 0.5,
                                cost=flat_cost)
        self.assertEqual(given.candidates, (
            frugal.Compression.none(), frugal.Compression.topk(0.1)))
        self.assertEqual((given.warmup, given.trial_steps, given.retune,
                          given.margin, given.cost),
                         (3, 2, 7, 0.5, flat_cost))
        self.assertEqual(given, frugal.Autotune(
            [frugal.Compression.none(), "topk:density=0.1"], warmup=3,
            trial_steps=2, retune=7, margin=0.5, cost=flat_cost))
        self.assertNotEqual(given, a)
        self.assertEqual(pickle.loads(pickle.dumps(given)), given)
        self.assertEqual(hash(pickle.loads(pickle.dumps(given))),
                         hash(given))
        self.assertEqual(repr(a), "Autotune(None, warmup=50, trial_steps=5, "
                         "retune=0, margin=0.1)")
        with self.assertRaises(AttributeError):
            a.margin = 0.2  # type: ignore[misc]
        self.assertIsNone(frugal.Autotune.of(None))
        self.assertIsNone(frugal.Autotune.of(False))
        self.assertEqual(frugal.Autotune.of(True), a)
        self.assertIs(frugal.Autotune.of(given), given)
        b = two_buckets(True)
        self.assertEqual(b.autotune, a)
        self.assertEqual(b.autotune_candidates, ["dense", "fp16", "ternary"])
        off = two_buckets(None)
        self.assertIsNone(off.autotune)
        self.assertEqual(off.autotune_candidates, [])

    def test_bad_values_are_named(self) -> None:
        nan, inf = float("nan"), float("inf")
        cases: List[Tuple[dict, List[str]]] = [
            (dict(warmup=-1), ["autotune.warmup"]),
            (dict(warmup=True), ["autotune.warmup"]),
            (dict(warmup=2.0), ["autotune.warmup"]),
            (dict(trial_steps=0), ["autotune.trial_steps"]),
            (dict(retune=-3), ["autotune.retune"]),
            (dict(retune=2 ** 64), ["autotune.retune"]),
            (dict(margin=-0.1), ["autotune.margin"]),
            (dict(margin=nan), ["autotune.margin"]),
            (dict(margin=inf), ["autotune.margin"]),
            (dict(margin="0.1"), ["autotune.margin"]),
            (dict(candidates="fp16"), ["autotune.candidates", "list"]),
            (dict(candidates=[]), ["autotune.candidates", "empty"]),
            (dict(candidates=["fp16", "zip"]),
             ["autotune.candidates", "candidate 1", "zip"]),
            (dict(candidates=["qsgd:bits=3"]),
             ["autotune.candidates", "candidate 0", "bits"]),
            (dict(candidates=[3]), ["autotune.candidates", "candidate 0"]),
            (dict(candidates=["fp16"] * 17),
             ["autotune.candidates", "at most 16"]),
            (dict(cost=5), ["autotune.cost"]),
        ]
        for kwargs, words in cases:
            self.assert_rejected(lambda: frugal.Autotune(**kwargs), *words)
        self.assert_rejected(lambda: two_buckets("on"), "autotune", "str")
        # The library's own refusal of a method beside auto, kept.
        self.assert_rejected(
            lambda: two_buckets(True, compression="onebit"), "autotune",
            "must be none, got onebit")
        self.assert_rejected(lambda: two_buckets(True, error_feedback=False),
                             "autotune", "error_feedback")
        self.assert_rejected(lambda: two_buckets(True, hierarchical=True),
                             "hierarchical")
        self.assert_rejected(lambda: frugal.torch.DistributedOptimizer(
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1),
            autotune="on"), "autotune")
        b = frugal.Buckets(autotune=True)
        b.add("w", N)
        b.add("bias", 16, dims=1)
        b.mark_ready(0, gradient(0, 0))
        b.mark_ready(1, np.ones(16, np.float32))
        b.finish()
        self.assertEqual(b.bucket_count, 2)
        self.assertEqual([b.bucket_is_dense(i) for i in range(2)],
                         [False, True])
        self.assertEqual(b.bucket_candidate(0), 0)
        self.assert_rejected(lambda: b.bucket_candidate(1), "dense")
        self.assert_rejected(lambda: b.bucket_candidate(2), "bucket", "2")
        for bucket in (-1, "0", True):
            self.assert_rejected(lambda: b.bucket_candidate(bucket),
                                 "bucket")
        off = two_buckets(None, compression="onebit")
        step(off, 0)
        self.assert_rejected(lambda: off.bucket_candidate(0),
                             "autotune is off")

    def test_a_cost_function_chooses_on_the_schedule(self) -> None:
        cost = Recorder(TABLE)
        b = two_buckets(frugal.Autotune(warmup=2, trial_steps=2, cost=cost))
        trace = []
        for s in range(1, 11):
            cost.step = s
            result = step(b, s)
            if s == 1:  # candidates[0] is dense: the exact sum of one rank
                np.testing.assert_array_equal(
                    result, np.concatenate([gradient(1, 0), gradient(1, 1)]))
            trace.append(([b.bucket_candidate(i) for i in range(2)],
                          [b.bucket_setting(i) for i in range(2)],
                          b.last_step_autotune_events))
        events = [e for _, _, step_events in trace for e in step_events]
        moves = [(e["step"], e["bucket"], e["from"], e["to"])
                 for e in events if not e["decision"]]
        self.assertEqual(moves, [(4, 0, "dense", "fp16"),
                                 (4, 1, "dense", "fp16"),
                                 (6, 0, "fp16", "ternary"),
                                 (6, 1, "fp16", "ternary")])
        for e in events:
            self.assertEqual(set(e), {"step", "bucket", "from", "to",
                                      "decision", "costs"})
        decisions = [e for e in events if e["decision"]]
        self.assertEqual(decisions, [
            {"step": 8, "bucket": 0, "from": "ternary", "to": "fp16",
             "decision": True, "costs": TABLE[0]},
            {"step": 8, "bucket": 1, "from": "ternary", "to": "ternary",
             "decision": True, "costs": TABLE[1]}])
        during = [0, 0, 0, 1, 1, 2, 2]
        names = ["dense", "fp16", "ternary"]
        for s, (candidates, settings, _) in enumerate(trace, 1):
            want = [during[s - 1]] * 2 if s <= len(during) else [1, 2]
            self.assertEqual(candidates, want, s)
            self.assertEqual(settings, [names[c] for c in want], s)
        # The first step (the ranks' first agreement) and every trial step,
        # with the candidate that ran; nothing after the decision.
        ran = {1: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 2, 8: 2}
        self.assertEqual(cost.calls, [(s, bucket, c) for s, c in ran.items()
                                      for bucket in (0, 1)])

    def test_explicit_candidates(self) -> None:
        b = two_buckets(frugal.Autotune(
            ["none", "topk:density=0.1", frugal.Compression.qsgd(bits=8)],
            warmup=1, trial_steps=1, cost=lambda b, c, s: [3.0, 2.0, 1.0][c]))
        self.assertEqual(b.autotune_candidates,
                         ["dense", "topk(density=0.1)", "qsgd(bits=8)"])
        events = []
        for s in range(1, 5):
            step(b, s)
            events += [(e["step"], e["to"]) for e in
                       b.last_step_autotune_events if e["bucket"] == 0]
        self.assertEqual(events, [(2, "topk(density=0.1)"),
                                  (3, "qsgd(bits=8)"), (4, "qsgd(bits=8)")])
        self.assertEqual([b.bucket_candidate(i) for i in range(2)], [2, 2])
        self.assertEqual(b.bucket_setting(1), "qsgd(bits=8)")

    def test_a_refused_cost_is_an_error_naming_it(self) -> None:
        def raising(bucket: int, candidate: int, seconds: float) -> float:
            raise ValueError("no price list")

        costs: List[Tuple[Callable[..., Any], List[str]]] = [
            (lambda *_: -1.0, []),
            (lambda *_: math.nan, []),
            (lambda *_: math.inf, []),
            (lambda *_: "cheap", ["not a float"]),
            (raising, ["ValueError", "no price list"]),
        ]
        for cost, words in costs:
            b = two_buckets(frugal.Autotune(warmup=0, trial_steps=1,
                                            cost=cost))
            g = gradient(0, 0)
            b.mark_ready(0, g)
            b.mark_ready(1, gradient(0, 1))
            self.assert_rejected(b.finish, "autotune.cost", *words)
        # A fine cost afterwards: the error was this finish()'s only.
        b = two_buckets(frugal.Autotune(warmup=0, trial_steps=1,
                                        cost=flat_cost))
        step(b, 1)

    def test_state_dict_keeps_the_choice(self) -> None:
        def make() -> frugal.Buckets:
            return two_buckets(frugal.Autotune(
                warmup=2, trial_steps=2, cost=Recorder(TABLE)))
        b = make()
        for s in range(1, 10):
            step(b, s)
        again = make()
        again.load_state_dict(b.state_dict())
        self.assertEqual([again.bucket_candidate(i) for i in range(2)],
                         [1, 2])
        # The next step from both: same residuals, same random streams.
        np.testing.assert_array_equal(step(b, 10), step(again, 10))
        self.assertEqual(again.last_step_autotune_events, [])
        # The candidates travel with the state: refused without auto.
        with self.assertRaises(frugal.MismatchError) as cm:
            two_buckets(None, compression="fp16").load_state_dict(
                b.state_dict())
        self.assertIn("autotune", str(cm.exception))

    def test_distributed_optimizer_passes_it_on(self) -> None:
        w = torch.nn.Parameter(torch.zeros(64, N // 64))
        bias = torch.nn.Parameter(torch.zeros(8))

        def make(autotune: Optional[frugal.Autotune]) -> Any:
            return frugal.torch.DistributedOptimizer(
                torch.optim.SGD([w, bias], lr=0.0),
                [("w", w), ("bias", bias)], bucket_mb=N * 4 / 2 ** 20,
                autotune=autotune)
        tune = frugal.Autotune(warmup=1, trial_steps=1,
                               cost=lambda b, c, s: [2.0, 3.0, 1.0][c])
        opt = make(tune)
        self.assertFalse(opt.momentum_correction)
        self.assertEqual(opt.autotune_settings, [])
        settings, events = [], []
        for s in range(5):
            opt.zero_grad()
            target = torch.from_numpy(gradient(s, 0)).view(w.shape)
            ((w * target).sum() + bias.sum()).backward()
            opt.step()
            settings.append(opt.autotune_settings)
            events += [(e["step"], e["from"], e["to"], e["decision"])
                       for e in opt.last_step_autotune_events]
        self.assertEqual(events, [(2, "dense", "fp16", False),
                                  (3, "fp16", "ternary", False),
                                  (4, "ternary", "ternary", True)])
        # The bias travels in a dense bucket of its own, never tuned.
        dense = settings[0].index(None)
        tuned = 1 - dense
        self.assertEqual([x[tuned] for x in settings],
                         ["dense", "fp16", "ternary", "ternary", "ternary"])
        self.assertEqual(make(None).autotune_settings, [])
        resumed = make(tune)
        resumed.load_state_dict(opt.state_dict())
        self.assertEqual(resumed.autotune_settings, opt.autotune_settings)


if __name__ == "__main__":
    unittest.main(verbosity=2)
