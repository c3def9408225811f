"""The accuracy guardrail through the package in one process (world size 1
over an in-memory store): frugal.Guardrail's defaults (the C++ header's)
and refusals, frugal.Buckets stepping a bucket up past the upper bound and
back down after `patience` calm steps, and DistributedOptimizer passing it
on. The 2-rank checks (the ranks agree; other options are a mismatch) are
in worker.py.
"""
import pickle
import re
import unittest
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch

import frugal
import frugal.torch
from guardrail_inputs import GUARD, N, buckets, gradient
from one_rank import OneRankCase

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def header_defaults() -> dict:
    """GuardrailOptions' defaults as guardrail.hpp spells them."""
    text = (SOURCE_ROOT / "collectives" / "include" / "frugal" /
            "collectives" / "guardrail.hpp").read_text()
    found = dict(re.findall(
        r"(?:double|std::size_t) (lower|upper|smoothing|patience|cooldown)"
        r" = ([0-9.]+);", text))
    assert len(found) == 5, found
    return {k: (int(v) if k in ("patience", "cooldown") else float(v))
            for k, v in found.items()}


def run(b: frugal.Buckets, steps: int, spiky: Callable[[int], bool]
        ) -> List[Any]:
    """(rung, setting, events) after each step."""
    out = []
    for s in range(steps):
        g = gradient(s, spiky(s))
        b.mark_ready(0, g)
        b.finish()
        out.append((b.bucket_rung(0), b.bucket_setting(0),
                    b.last_step_guardrail_events))
    return out


class GuardrailTest(OneRankCase):
    def test_defaults_are_the_librarys(self) -> None:
        g = frugal.Guardrail()
        for name, value in header_defaults().items():
            self.assertEqual(getattr(g, name), value, name)
        self.assertEqual(GUARD, frugal.Guardrail(
            0.5, 2.5, patience=10, smoothing=1, cooldown=3))
        self.assertNotEqual(GUARD, g)
        self.assertEqual(pickle.loads(pickle.dumps(GUARD)), GUARD)
        self.assertEqual(hash(pickle.loads(pickle.dumps(GUARD))),
                         hash(GUARD))
        self.assertEqual(repr(g), "Guardrail(2.0, 8.0, patience=200, "
                         "smoothing=0.1, cooldown=20)")
        with self.assertRaises(AttributeError):
            g.upper = 3.0  # type: ignore[misc]
        self.assertIsNone(frugal.Guardrail.of(None))
        self.assertIsNone(frugal.Guardrail.of(False))
        self.assertEqual(frugal.Guardrail.of(True), g)
        self.assertIs(frugal.Guardrail.of(GUARD), GUARD)

    def test_bad_values_are_named(self) -> None:
        nan, inf = float("nan"), float("inf")
        cases = [
            (dict(lower=-1.0), "guardrail.lower"),
            (dict(lower=nan), "guardrail.lower"),
            (dict(lower="1"), "guardrail.lower"),
            (dict(lower=True), "guardrail.lower"),
            (dict(lower=3.0, upper=3.0), "guardrail.upper"),
            (dict(upper=1.0), "guardrail.upper"),  # below the default 2
            (dict(upper=inf), "guardrail.upper"),
            (dict(patience=0), "guardrail.patience"),
            (dict(patience=-5), "guardrail.patience"),
            (dict(patience=2.0), "guardrail.patience"),
            (dict(patience=2 ** 64), "guardrail.patience"),
            (dict(smoothing=0.0), "guardrail.smoothing"),
            (dict(smoothing=1.5), "guardrail.smoothing"),
            (dict(cooldown=0), "guardrail.cooldown"),
            (dict(cooldown=None, patience=True), "guardrail.patience"),
        ]
        for kwargs, name in cases:
            self.assert_rejected(lambda: frugal.Guardrail(**kwargs), name)
        self.assert_rejected(lambda: frugal.Buckets(guardrail="on"),
                             "guardrail", "str")
        self.assert_rejected(lambda: frugal.Buckets(guardrail=1),
                             "guardrail", "int")
        self.assert_rejected(lambda: frugal.Buckets(
            compression="onebit", error_feedback=False, guardrail=True),
            "guardrail", "error_feedback")
        self.assert_rejected(lambda: frugal.torch.DistributedOptimizer(
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1),
            guardrail="on"), "guardrail")
        b = buckets()
        b.mark_ready(0, gradient(0, False))
        b.finish()
        for bucket in (-1, "0", True):
            self.assert_rejected(lambda: b.bucket_rung(bucket), "bucket")
        self.assert_rejected(lambda: b.bucket_setting(1), "bucket", "1")

    def test_a_blow_up_steps_up_and_recovery_steps_back_down(self) -> None:
        b = buckets()
        self.assertEqual(b.guardrail, GUARD)
        trace = run(b, 20, lambda s: s < 10)
        events = [e for _, _, step_events in trace for e in step_events]
        self.assertEqual(len(events), 2, events)
        up, down = events
        self.assertEqual({k: up[k] for k in ("step", "bucket", "from", "to",
                                             "from_rung", "to_rung")},
                         {"step": 3, "bucket": 0, "from": "onebit",
                          "to": "fp16", "from_rung": 0, "to_rung": 1})
        self.assertGreater(up["ratio"], GUARD.upper)
        self.assertGreater(up["relative_error"], 0.0)
        self.assertEqual((down["step"], down["from"], down["to"]),
                         (13, "fp16", "onebit"))
        self.assertLess(down["ratio"], GUARD.lower)
        for s, (rung, setting, _) in enumerate(trace, 1):
            up_now = 3 <= s < 13
            self.assertEqual(rung, 1 if up_now else 0, s)
            self.assertEqual(setting, "fp16" if up_now else "onebit", s)
        self.assertGreaterEqual(b.bucket_residual_ratio(0), 0.0)

        # Without the guardrail the bucket stays on onebit.
        for off in (None, False):
            plain = buckets(off)
            self.assertIsNone(plain.guardrail)
            for rung, setting, step_events in run(plain, 6,
                                                  lambda s: True):
                self.assertEqual((rung, setting, step_events),
                                 (0, "onebit", []))

    def test_state_dict_keeps_the_rung(self) -> None:
        b = buckets()
        run(b, 3, lambda s: True)
        self.assertEqual(b.bucket_rung(0), 1)
        again = buckets()
        again.load_state_dict(b.state_dict())
        self.assertEqual(again.bucket_rung(0), 1)
        self.assertEqual(again.bucket_setting(0), "fp16")
        # Its setting and carry travel with the state: refused without.
        with self.assertRaises(frugal.MismatchError):
            buckets(None).load_state_dict(b.state_dict())

    def test_dense_buckets_are_left_alone(self) -> None:
        b = frugal.Buckets(guardrail=True)
        b.add("w", N)
        for s in range(3):
            b.mark_ready(0, gradient(s, True))
            b.finish()
            self.assertEqual(b.last_step_guardrail_events, [])
            self.assertEqual((b.bucket_rung(0), b.bucket_setting(0)),
                             (0, "dense"))

    def test_distributed_optimizer_passes_it_on(self) -> None:
        # loss = <p, target>: the gradient is the target, exactly. A
        # matrix: vectors travel dense (dense_vectors), never guarded.
        p = torch.nn.Parameter(torch.zeros(64, N // 64))

        def target(s: int, spike: bool) -> torch.Tensor:
            return torch.from_numpy(gradient(s, spike)).view(p.shape)

        def make(guardrail: Optional[frugal.Guardrail]) -> Any:
            return frugal.torch.DistributedOptimizer(
                torch.optim.SGD([p], lr=0.0), [("w", p)],
                compression="onebit", bucket_mb=N * 4 / 2 ** 20,
                guardrail=guardrail)
        opt = make(GUARD)
        self.assertFalse(opt.momentum_correction)
        self.assertEqual(opt.guardrail_rungs, [])
        rungs, events = [], []
        for s in range(14):
            opt.zero_grad()
            (p * target(s, s < 10)).sum().backward()
            opt.step()
            rungs.append(opt.guardrail_rungs)
            events += [(e["step"], e["from"], e["to"])
                       for e in opt.last_step_guardrail_events]
        self.assertEqual(events, [(3, "onebit", "fp16"),
                                  (13, "fp16", "onebit")])
        self.assertEqual(rungs, [[0]] * 2 + [[1]] * 10 + [[0]] * 2)
        # Three more spikes step up again; the rung is in the checkpoint.
        for s in range(3):
            opt.zero_grad()
            (p * target(s, True)).sum().backward()
            opt.step()
        self.assertEqual(opt.guardrail_rungs, [1])
        state = opt.state_dict()
        resumed = make(GUARD)
        resumed.load_state_dict(state)
        self.assertEqual(resumed.guardrail_rungs, opt.guardrail_rungs)


if __name__ == "__main__":
    unittest.main(verbosity=2)
