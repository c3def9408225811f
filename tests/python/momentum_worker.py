"""One of 2 ranks checking DistributedOptimizer's momentum correction
(meson test python-momentum-mpirun runs it under mpirun -np 2):

- dense allreduce: the weights equal a serial reference of DGC's rule on
  both ranks' data (weight decay outside the momentum) within 1e-6, plain
  and Nesterov, with several backward passes per step; each rank's
  velocity is its own, and their average is the reference's velocity;
- non_finite="skip" with a NaN on rank 1: the step is skipped on both
  and leaves no trace in the velocities;
- onebit: on by default, identical weights on both ranks, different from
  the same run without it; a state_dict(all_ranks=True) checkpoint
  resumes bit for bit, and zeroed velocities would not;
- synchronize() (twice) then step(), onebit with momentum correction: the
  same wire bytes, weights and velocities as step() alone (the gradients
  are reduced once).

Each check prints "rank R: ok NAME"; a failure raises (exit code 1).
"""
import copy
import io
from typing import Any, List

import torch

import frugal
from momentum_reference import (loss_of, make_model, reference, rel_diff,
                                train, velocities, velocity_diff, wrap)

STEPS = 6


def ok(name: str) -> None:
    print("rank %d: ok %s" % (frugal.rank(), name), flush=True)


def weights(model: torch.nn.Module) -> bytes:
    return b"".join(p.detach().numpy().tobytes()
                    for p in model.parameters())


def same_everywhere(model: torch.nn.Module, what: str) -> None:
    everyone = frugal.allgather_object(weights(model))
    assert all(w == everyone[0] for w in everyone), \
        "%s: the ranks hold different weights" % what


def dense(nesterov: bool, passes: int) -> None:
    name = "dense nesterov=%s passes=%d" % (nesterov, passes)
    model = make_model()
    opt = wrap(model, nesterov, compression=None, momentum_correction=True,
               backward_passes_per_step=passes)
    assert opt.momentum_correction
    train(model, opt, range(STEPS), passes)
    want, want_v = reference(STEPS, frugal.size(), nesterov, passes)
    diff = rel_diff(model, want)
    assert diff <= 1e-6, "%s: %.3g from the reference" % (name, diff)
    torch_sgd, _ = reference(STEPS, frugal.size(), nesterov, passes,
                             wd_in_momentum=True)
    assert rel_diff(model, torch_sgd) > 1e-5, \
        "%s: weight decay is inside the momentum" % name
    everyone: List[Any] = frugal.allgather_object(velocities(opt))
    mean = {}
    for key in want_v:
        ranks = [v[key] for v in everyone]
        assert not torch.equal(ranks[0], ranks[1]), \
            "%s: velocity of %s is the same on every rank" % (name, key)
        mean[key] = sum(ranks) / len(ranks)
    error = velocity_diff(mean, want_v)
    assert error <= 1e-6, "%s: the ranks' mean velocities are %.3g from " \
        "the reference's" % (name, error)
    ok("%s (%.2g from the reference)" % (name, diff))


def skip() -> None:
    model = make_model()
    opt = wrap(model, compression=None, momentum_correction=True,
               non_finite="skip")
    skipped = train(model, opt, range(5),
                    poison=lambda s: s == 2 and frugal.rank() == 1)
    assert skipped == [False, False, True, False, False], skipped
    want, _ = reference(5, frugal.size(), skip=2)
    diff = rel_diff(model, want)
    assert diff <= 1e-6, "skip: %.3g from the reference" % diff
    for v in velocities(opt).values():
        assert bool(torch.isfinite(v).all()), "skip: a NaN in a velocity"
    ok("a step skipped for rank 1's NaN leaves no trace (%.2g)" % diff)


def onebit() -> None:
    def run(steps: range, state: Any = None,
            correction: Any = None) -> torch.nn.Module:
        model = make_model()
        opt = wrap(model, compression="onebit",
                   momentum_correction=correction)
        assert opt.momentum_correction is (correction is not False)
        if state is not None:
            model.load_state_dict(state[0])
            opt.load_state_dict(state[1])
        train(model, opt, steps)
        if steps.stop == 4 and state is None:
            saved = (model.state_dict(), opt.state_dict(all_ranks=True))
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            buffer.seek(0)
            checkpoint.append(torch.load(buffer))
        return model

    checkpoint: List[Any] = []
    full = run(range(8))
    same_everywhere(full, "onebit")
    plain = run(range(8), correction=False)
    assert rel_diff(plain, full) > 1e-4, "onebit: correction changed nothing"
    run(range(4))
    (saved,) = checkpoint
    assert len(saved[1]["frugal"]["ranks"]) == frugal.size()
    resumed = run(range(4, 8), saved)
    assert weights(resumed) == weights(full), \
        "onebit: the resumed run differs from the uninterrupted one"
    zeroed = copy.deepcopy(saved)
    for entry in zeroed[1]["frugal"]["ranks"]:
        for v in entry["velocities"].values():
            v.zero_()
    assert rel_diff(run(range(4, 8), zeroed), full) > 1e-4, \
        "onebit: resuming without the velocities changed nothing"
    ok("onebit: on by default; identical weights; resumed bit for bit")


def synchronize_then_step() -> None:
    def run(calls: int) -> Any:
        model = make_model()
        opt = wrap(model, compression="onebit")
        assert opt.momentum_correction
        for step in range(4):
            opt.zero_grad()
            loss_of(model, frugal.rank(), step, 0).backward()
            for _ in range(calls):
                opt.synchronize()
            opt.step()
        return model, opt

    plain_model, plain = run(0)
    model, opt = run(2)
    assert plain.wire_bytes_sent > 0
    assert opt.wire_bytes_sent == plain.wire_bytes_sent, \
        "synchronize: %d wire bytes, step() alone %d" % (
            opt.wire_bytes_sent, plain.wire_bytes_sent)
    assert weights(model) == weights(plain_model), \
        "synchronize: other weights than step() alone"
    same_everywhere(model, "synchronize")
    mine, want = velocities(opt), velocities(plain)
    assert all(torch.equal(mine[n], want[n]) for n in want), \
        "synchronize: the velocities advanced otherwise"
    ok("synchronize() then step(): reduced once (%d bytes)"
       % opt.wire_bytes_sent)


def main() -> None:
    torch.set_num_threads(1)
    frugal.init(timeout=30)
    assert frugal.size() == 2, frugal.size()
    for nesterov, passes in ((False, 1), (True, 1), (False, 2)):
        dense(nesterov, passes)
    skip()
    onebit()
    synchronize_then_step()
    frugal.shutdown()


if __name__ == "__main__":
    main()
