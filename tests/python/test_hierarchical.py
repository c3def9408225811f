"""hierarchical= in one process (world size 1 over an in-memory store):
refusals by name (a non-bool, the guardrail alongside, through Buckets and
DistributedOptimizer). The reduction itself, on two hosts of two ranks:
hierarchical_worker.py under mpirun.
"""
import unittest

import torch

import frugal
import frugal.torch
from one_rank import OneRankCase


class HierarchicalOneRank(OneRankCase):
    def test_refusals_are_named(self) -> None:
        self.assert_rejected(lambda: frugal.Buckets(hierarchical=1),
                             "hierarchical", "int")
        self.assert_rejected(lambda: frugal.Buckets(
            compression="onebit", guardrail=True, hierarchical=True),
            "hierarchical", "guardrail")
        self.assert_rejected(lambda: frugal.torch.DistributedOptimizer(
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1),
            compression="onebit", guardrail=True, hierarchical=True),
            "hierarchical", "guardrail")
        # Without hierarchical the same guardrail is accepted.
        frugal.Buckets(compression="onebit", guardrail=True)

    def test_the_option_is_kept(self) -> None:
        self.assertFalse(frugal.Buckets().hierarchical)
        self.assertTrue(frugal.Buckets(hierarchical=True).hierarchical)


if __name__ == "__main__":
    unittest.main(verbosity=2)
