"""What the single-process test files share: a world of one rank over an
in-memory store, and a check that a call is refused naming its problem."""
import unittest
from typing import Callable, Dict

import frugal


class DictStore:
    """The smallest store init() accepts (one rank: get never waits)."""

    def __init__(self) -> None:
        self.data: Dict[str, bytes] = {}

    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def get(self, key: str) -> bytes:
        return self.data[key]


class OneRankCase(unittest.TestCase):
    """frugal initialised as rank 0 of 1 around each test."""

    def setUp(self) -> None:
        frugal.init(store=DictStore(), rank=0, world_size=1, timeout=10)

    def tearDown(self) -> None:
        frugal.shutdown()

    def assert_rejected(self, call: Callable[[], object],
                        *words: str) -> None:
        with self.assertRaises(frugal.InvalidArgumentError) as cm:
            call()
        for w in words:
            self.assertIn(w, str(cm.exception))
