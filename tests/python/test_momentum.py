"""DistributedOptimizer's momentum correction in one process (world size
1 over an in-memory store): the default and its rule, refusals, the
update rule against a serial reference, skipped steps, checkpoints.
The 2-rank checks are in momentum_worker.py.
"""
import copy
import io
import unittest

import torch

import frugal
from frugal._ext import ext
from momentum_reference import (LR, MU, loss_of, make_model, reference,
                                rel_diff, sgd, train, velocities,
                                velocity_diff, wrap)
from one_rank import OneRankCase

# The library's rule (compressor.hpp), as docs/trainer.md states it.
DEFAULT_ON = {"none": False, "fp16": False, "bf16": False, "topk": True,
              "onebit": True, "ternary": False, "qsgd": False}


def round_trip(state: dict) -> dict:
    """A state_dict as torch.save and torch.load leave it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


class MomentumCorrectionTest(OneRankCase):
    def test_rule_is_the_librarys(self) -> None:
        self.assertEqual(set(DEFAULT_ON), set(ext.compression_methods()))
        for method, on in DEFAULT_ON.items():
            self.assertIs(ext.momentum_correction_by_default(method), on,
                          method)
        self.assert_rejected(
            lambda: ext.momentum_correction_by_default("zip"), "method",
            "'zip'")

    def test_default_per_method(self) -> None:
        for method, on in DEFAULT_ON.items():
            opt = wrap(make_model(), compression=method)
            self.assertIs(opt.momentum_correction, on, method)
            # The wrapped SGD keeps its own momentum settings.
            self.assertEqual(opt.param_groups[0]["momentum"], MU)

    def test_default_off_where_it_cannot_be(self) -> None:
        model = make_model()
        cases = {
            "no error feedback": wrap(model, compression="onebit",
                                      error_feedback=False),
            "momentum 0": frugal.torch.DistributedOptimizer(
                sgd(model, momentum=0.0), compression="onebit"),
            "dampening": frugal.torch.DistributedOptimizer(
                sgd(model, dampening=0.1), compression="topk"),
            "Adam": frugal.torch.DistributedOptimizer(
                torch.optim.Adam(model.parameters()), compression="topk"),
            "False": wrap(model, compression="onebit",
                          momentum_correction=False),
        }
        for name, opt in cases.items():
            self.assertFalse(opt.momentum_correction, name)
        self.assertTrue(wrap(model, compression=None,
                             momentum_correction=True).momentum_correction)

    def test_explicit_true_names_what_is_missing(self) -> None:
        model = make_model()

        def make(opt: torch.optim.Optimizer, value: object = True) -> None:
            frugal.torch.DistributedOptimizer(
                opt, compression="onebit", momentum_correction=value)
        self.assert_rejected(lambda: make(
            torch.optim.Adam(model.parameters())), "momentum_correction",
            "torch.optim.SGD", "Adam")
        self.assert_rejected(lambda: make(sgd(model, momentum=0.0)),
                             "momentum_correction", "momentum > 0")
        self.assert_rejected(lambda: make(sgd(model, dampening=0.5)),
                             "momentum_correction", "dampening 0")
        self.assert_rejected(lambda: make(sgd(model), "yes"),
                             "momentum_correction", "'yes'")

    def check_rule(self, nesterov: bool, passes: int) -> None:
        model = make_model()
        opt = wrap(model, nesterov, compression=None,
                   momentum_correction=True,
                   backward_passes_per_step=passes)
        train(model, opt, range(6), passes)
        want, want_v = reference(6, 1, nesterov, passes)
        self.assertLess(rel_diff(model, want), 1e-6)
        self.assertLess(velocity_diff(velocities(opt), want_v), 1e-6)
        # torch's own SGD puts the weight decay into the momentum: a
        # different trajectory, so the check above can tell them apart.
        torch_sgd, _ = reference(6, 1, nesterov, passes,
                                 wd_in_momentum=True)
        self.assertGreater(rel_diff(model, torch_sgd), 1e-5)
        # SGD's momentum is back on, and it kept no buffers of its own.
        group = opt.param_groups[0]
        self.assertEqual((group["momentum"], group["nesterov"]),
                         (MU, nesterov))
        self.assertFalse(any("momentum_buffer" in opt.state[p]
                             for p in model.parameters()))

    def test_update_rule(self) -> None:
        self.check_rule(nesterov=False, passes=1)

    def test_update_rule_nesterov(self) -> None:
        self.check_rule(nesterov=True, passes=1)

    def test_update_rule_several_backward_passes(self) -> None:
        self.check_rule(nesterov=False, passes=3)

    def test_momentum_read_from_the_current_groups(self) -> None:
        # torch's load_state_dict replaces the parameter groups' dicts.
        model = make_model()
        opt = wrap(model, compression=None, momentum_correction=True)
        train(model, opt, range(1))  # mu does not enter the first step
        state = opt.state_dict()
        state["param_groups"][0]["momentum"] = 0.5
        opt.load_state_dict(state)
        train(model, opt, range(1, 4))
        want, _ = reference(4, 1, mu=0.5)
        self.assertLess(rel_diff(model, want), 1e-6)
        self.assertGreater(rel_diff(model, reference(4, 1)[0]), 1e-5)

    def test_skipped_step_leaves_no_trace(self) -> None:
        model = make_model()
        opt = wrap(model, compression=None, momentum_correction=True,
                   non_finite="skip")
        skipped = train(model, opt, range(5), poison=lambda s: s == 2)
        self.assertEqual(skipped, [False, False, True, False, False])
        want, want_v = reference(5, 1, skip=2)
        self.assertLess(rel_diff(model, want), 1e-6)
        self.assertLess(velocity_diff(velocities(opt), want_v), 1e-6)

    def test_skipped_first_step_leaves_no_velocity(self) -> None:
        model = make_model()
        opt = wrap(model, compression=None, momentum_correction=True,
                   non_finite="skip")
        self.assertEqual(train(model, opt, range(1), poison=lambda s: True),
                         [True])
        self.assertEqual(velocities(opt), {})

    def test_non_finite_zero_keeps_velocities_finite(self) -> None:
        model = make_model()
        opt = wrap(model, compression="onebit", non_finite="zero")
        self.assertTrue(opt.momentum_correction)
        train(model, opt, range(3), poison=lambda s: s == 1)
        for v in velocities(opt).values():
            self.assertTrue(bool(torch.isfinite(v).all()))
        for p in model.parameters():
            self.assertTrue(bool(torch.isfinite(p).all()))

    def test_checkpoint_resumes_exactly(self) -> None:
        def run(steps: range, state: object = None) -> tuple:
            model = make_model()
            opt = wrap(model, compression="onebit")
            if state is not None:
                model.load_state_dict(state[0])
                opt.load_state_dict(state[1])
            train(model, opt, steps)
            return model, opt

        full, _ = run(range(8))
        half, opt = run(range(4))
        saved = round_trip((half.state_dict(), opt.state_dict()))
        self.assertTrue(saved[1]["frugal"]["momentum_correction"])
        self.assertEqual(len(saved[1]["frugal"]["velocities"]), 4)
        resumed, _ = run(range(4, 8), saved)
        self.assertEqual(rel_diff(resumed, full), 0.0)
        # Without the velocities the run is another: the check above can
        # fail.
        zeroed = copy.deepcopy(saved)
        for v in zeroed[1]["frugal"]["velocities"].values():
            v.zero_()
        other, _ = run(range(4, 8), zeroed)
        self.assertGreater(rel_diff(other, full), 1e-4)

    def test_other_kind_of_state_refused(self) -> None:
        model, other = make_model(), make_model()
        corrected = wrap(model, compression="topk")
        plain = wrap(other, compression="topk", momentum_correction=False)
        train(model, corrected, range(2))
        train(other, plain, range(2))
        self.assert_rejected(
            lambda: plain.load_state_dict(corrected.state_dict()),
            "momentum_correction=True", "momentum_correction=False")
        self.assert_rejected(
            lambda: corrected.load_state_dict(plain.state_dict()),
            "momentum_correction=False", "momentum_correction=True")
        state = corrected.state_dict()
        name = next(iter(state["frugal"]["velocities"]))
        state["frugal"]["velocities"][name] = torch.zeros(3)
        self.assert_rejected(lambda: corrected.load_state_dict(state),
                             "velocities", repr(name), "shape")
        state["frugal"]["velocities"] = {"nosuch": torch.zeros(3)}
        self.assert_rejected(lambda: corrected.load_state_dict(state),
                             "velocities", "'nosuch'")

    def test_all_ranks_state_round_trip(self) -> None:
        model = make_model()
        opt = wrap(model, compression="topk")
        train(model, opt, range(2))
        state = opt.state_dict(all_ranks=True)
        (entry,) = state["frugal"]["ranks"]
        self.assertEqual(set(entry["velocities"]),
                         {n for n, _ in model.named_parameters()})
        before = velocities(opt)
        opt.load_state_dict(round_trip(state))
        for name, v in velocities(opt).items():
            self.assertTrue(torch.equal(v, before[name]))


def train_synchronized(model: torch.nn.Module, opt: torch.optim.Optimizer,
                       steps: range, calls: int = 2) -> None:
    """As momentum_reference.train, but each step calls synchronize()
    `calls` times before step() (Horovod's pattern)."""
    for step in steps:
        opt.zero_grad()
        loss_of(model, frugal.rank(), step, 0).backward()
        for _ in range(calls):
            opt.synchronize()
        opt.step()


class SynchronizeThenStepTest(OneRankCase):
    """synchronize() then step() reduces the gradients once."""

    def test_velocities_advance_once(self) -> None:
        # Reducing again would advance each velocity a second time, with
        # the averaged velocity as its gradient: off the reference.
        model = make_model()
        opt = wrap(model, compression=None, momentum_correction=True)
        train_synchronized(model, opt, range(5))
        want, want_v = reference(5, 1)
        self.assertLess(rel_diff(model, want), 1e-6)
        self.assertLess(velocity_diff(velocities(opt), want_v), 1e-6)
        plain_model = make_model()
        plain = wrap(plain_model, compression=None,
                     momentum_correction=True)
        train(plain_model, plain, range(5))
        self.assertEqual(rel_diff(model, plain_model), 0.0)

    def test_step_applies_the_clipped_average(self) -> None:
        # onebit with error feedback: reducing the clipped gradients again
        # would compress them (with the residual) into something else.
        model = make_model()
        opt = frugal.torch.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=LR),
            model.named_parameters(), compression="onebit")
        self.assertFalse(opt.momentum_correction)
        for step in range(3):
            opt.zero_grad()
            loss_of(model, 0, step, 0).backward()
            opt.synchronize()
            reduced = [p.grad.clone() for p in model.parameters()]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            clipped = [p.grad.clone() for p in model.parameters()]
            self.assertFalse(all(torch.equal(a, b)
                                 for a, b in zip(reduced, clipped)))
            want = [p.detach().clone().add_(g, alpha=-LR)
                    for p, g in zip(model.parameters(), clipped)]
            opt.step()
            for p, w in zip(model.parameters(), want):
                self.assertTrue(torch.equal(p.detach(), w), step)

    def test_new_gradients_after_synchronize_are_reduced(self) -> None:
        # A backward or zero_grad() after synchronize() makes its averages
        # stale: step() reduces what p.grad holds then, which advances the
        # velocities (v = g at the first reduction) a second time.
        _, first = reference(1, 1)
        for again, factor in (("backward", 1 + MU), ("zero_grad", MU)):
            model = make_model()
            opt = wrap(model, compression=None, momentum_correction=True)
            opt.zero_grad()
            loss_of(model, 0, 0, 0).backward()
            opt.synchronize()
            opt.zero_grad()
            if again == "backward":
                loss_of(model, 0, 0, 0).backward()
            opt.step()
            want = {n: factor * v for n, v in first.items()}
            self.assertLess(velocity_diff(velocities(opt), want), 1e-6,
                            again)


if __name__ == "__main__":
    unittest.main(verbosity=2)
