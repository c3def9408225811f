"""The package in one process: Compression values, errors, argument checks.

Collectives run with world size 1 over an in-memory store.
"""

import os
import pickle
import re
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import frugal
from frugal._ext import ext
from one_rank import DictStore, OneRankCase

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def cpp_defaults():
    """The defaults as compressor.hpp spells them."""
    text = (SOURCE_ROOT / "compression" / "include" / "frugal" /
            "compression" / "compressor.hpp").read_text()

    def find(pattern):
        return re.search(pattern, text).group(1)
    return {
        "density": float(find(r"double density = ([0-9.]+);")),
        "tolerance": float(find(r"double tolerance = ([0-9.]+);")),
        "bits": int(find(r"int bits = (\d+);")),
        "onebit": int(find(r"kDefaultOneBitChunk = (\d+);")),
        "ternary": int(find(r"kDefaultTernaryBucket = (\d+);")),
        "qsgd": int(find(r"kDefaultQsgdBucket = (\d+);")),
        "clip": float(find(r"float clip_sigma = ([0-9.]+)f;")),
        "norm": find(r"QsgdNorm norm = QsgdNorm::(\w+);").lower(),
    }


class CompressionTest(unittest.TestCase):
    def test_defaults_are_the_libraries(self):
        d = cpp_defaults()
        C = frugal.Compression
        self.assertEqual(C.topk().params, {
            "density": d["density"], "selection": "exact",
            "tolerance": d["tolerance"], "values": "fp32",
            "scope": "global", "gtopk": False})
        self.assertEqual(C.topk(scope="per_tensor").params["scope"],
                         "per_tensor")
        self.assertIs(C.topk(gtopk=True).params["gtopk"], True)
        self.assertEqual(C.parse("topk:gtopk=true"), C.topk(gtopk=True))
        self.assertEqual(
            C.parse("topk:scope=per_tensor"), C.topk(scope="per_tensor"))
        self.assertEqual(C.onebit().params,
                         {"scaling": "mean-abs", "bucket": d["onebit"]})
        self.assertEqual(C.ternary().params,
                         {"bucket": d["ternary"], "clip": d["clip"]})
        self.assertEqual(C.qsgd().params,
                         {"bits": d["bits"], "bucket": d["qsgd"],
                          "norm": d["norm"]})
        self.assertEqual(C.bf16().params, {"stochastic_rounding": False})
        self.assertEqual(C.none().params, {})
        self.assertEqual(C.fp16().params, {})

    def test_methods(self):
        C = frugal.Compression
        made = [C.none(), C.fp16(), C.bf16(), C.topk(), C.onebit(),
                C.ternary(), C.qsgd()]
        self.assertEqual([c.method for c in made],
                         ["none", "fp16", "bf16", "topk", "onebit",
                          "ternary", "qsgd"])
        self.assertEqual(ext.compression_methods(),
                         [c.method for c in made])
        self.assertFalse(C.none().compressed)
        self.assertTrue(C.fp16().compressed)

    def test_repr_round_trips(self):
        C = frugal.Compression
        self.assertEqual(repr(C.topk()), "Compression.topk(density=0.01)")
        self.assertEqual(repr(C.topk(k=10)), "Compression.topk(k=10)")
        self.assertEqual(
            repr(C.topk(0.05, selection="sampled")),
            "Compression.topk(density=0.05, selection='sampled')")
        self.assertEqual(repr(C.qsgd(bits=8, norm="l2")),
                         "Compression.qsgd(bits=8, norm='l2')")
        self.assertEqual(repr(C.ternary(clip=0)),
                         "Compression.ternary(bucket=512, clip=0.0)")
        self.assertEqual(repr(C.none()), "Compression.none()")
        for c in [C.none(), C.bf16(stochastic_rounding=True),
                  C.topk(0.2, values="fp16"), C.onebit("sign-means"),
                  C.ternary(64), C.qsgd(2, 128, "max"), C.topk(k=3)]:
            self.assertEqual(eval(repr(c), {"Compression": C}), c)
            self.assertEqual(pickle.loads(pickle.dumps(c)), c)

    def test_equality_and_hash_use_resolved_values(self):
        C = frugal.Compression
        d = cpp_defaults()
        self.assertEqual(C.topk(), C.topk(density=d["density"]))
        self.assertEqual(C.ternary(), C.ternary(bucket=d["ternary"]))
        self.assertEqual(hash(C.qsgd()), hash(C.qsgd(bits=d["bits"])))
        self.assertNotEqual(C.topk(), C.topk(0.02))
        self.assertNotEqual(C.fp16(), C.bf16())
        self.assertEqual(len({C.topk(), C.topk(0.01), C.qsgd(), C.none()}),
                         3)
        self.assertNotEqual(C.none(), "none")

    def test_parse(self):
        C = frugal.Compression
        self.assertEqual(C.parse("topk:density=0.05,selection=sampled"),
                         C.topk(0.05, selection="sampled"))
        self.assertEqual(C.parse("qsgd:bits=8"), C.qsgd(8))
        self.assertEqual(C.parse("bf16:stochastic_rounding=true"),
                         C.bf16(stochastic_rounding=True))
        self.assertEqual(C.parse(" none "), C.none())
        self.assertEqual(C.of(None), C.none())
        self.assertEqual(C.of("onebit"), C.onebit())

    def test_immutable(self):
        c = frugal.Compression.topk()
        with self.assertRaises(AttributeError):
            c.method = "qsgd"
        c.params["density"] = 0.5
        self.assertEqual(c.params["density"], cpp_defaults()["density"])

    def test_bad_parameters_name_themselves(self):
        C = frugal.Compression
        cases = [
            (lambda: C.topk(0), "density"),
            (lambda: C.topk(1.5), "density"),
            (lambda: C.topk("dense"), "density"),
            (lambda: C.topk(k=0), "k"),
            (lambda: C.topk(0.1, k=3), "k"),
            (lambda: C.topk(selection="fast"), "selection"),
            (lambda: C.topk(tolerance=1.0), "tolerance"),
            (lambda: C.topk(values="int8"), "values"),
            (lambda: C.onebit("max"), "scaling"),
            (lambda: C.onebit(bucket=12), "bucket"),
            (lambda: C.ternary(0), "bucket"),
            (lambda: C.ternary(3.5), "bucket"),
            (lambda: C.ternary(clip=-1.0), "clip"),
            (lambda: C.ternary(clip="2"), "clip"),
            (lambda: C.qsgd(3), "bits"),
            (lambda: C.qsgd(True), "bits"),
            (lambda: C.qsgd(norm="l1"), "norm"),
            (lambda: C.bf16(stochastic_rounding=1), "stochastic_rounding"),
            (lambda: C.topk(gtopk=1), "gtopk"),
            (lambda: C("zip"), "method"),
            (lambda: C("topk", bits=4), "bits"),
            (lambda: C.parse("topk:density"), "density"),
            (lambda: C.parse("qsgd:bits=16"), "bits"),
            (lambda: C.of(3), "compression"),
        ]
        for make, name in cases:
            with self.assertRaises(frugal.InvalidArgumentError) as cm:
                make()
            self.assertIn(name, str(cm.exception))
            self.assertIsInstance(cm.exception, ValueError)


class ErrorsTest(unittest.TestCase):
    def test_hierarchy(self):
        E = frugal
        for cls in (E.InvalidArgumentError, E.MismatchError, E.TimeoutError,
                    E.PeerFailureError, E.TransportError, E.InternalError):
            self.assertTrue(issubclass(cls, E.Error))
        self.assertTrue(issubclass(E.Error, RuntimeError))
        self.assertTrue(issubclass(E.InvalidArgumentError, ValueError))
        self.assertTrue(issubclass(E.TimeoutError, TimeoutError))
        self.assertFalse(issubclass(E.MismatchError, ValueError))

    def test_cpp_errors_translate_by_code(self):
        expected = {
            "invalid argument": (frugal.InvalidArgumentError,
                                 "invalid_argument"),
            "mismatch": (frugal.MismatchError, "mismatch"),
            "timeout": (frugal.TimeoutError, "timeout"),
            "peer failure": (frugal.PeerFailureError, "peer_failure"),
            "transport error": (frugal.TransportError, "transport"),
            "internal error": (frugal.InternalError, "internal"),
        }
        for cpp_code, (cls, code) in expected.items():
            with self.assertRaises(cls) as cm:
                ext._raise_error(cpp_code, "what happened")
            self.assertEqual(cm.exception.code, code)
            self.assertIn("what happened", str(cm.exception))
            # Exactly that class, not a sibling.
            self.assertIs(type(cm.exception), cls)
        with self.assertRaises(frugal.MismatchError) as cm:
            ext._raise_error("mismatch", "counts differ")
        self.assertIn("another rank rejected its arguments",
                      str(cm.exception))


class InitTest(unittest.TestCase):
    def tearDown(self):
        frugal.shutdown()

    def test_lifecycle(self):
        self.assertFalse(frugal.is_initialized())
        with self.assertRaises(frugal.InvalidArgumentError):
            frugal.get_communicator()
        comm = frugal.init(store=DictStore(), rank=0, world_size=1,
                           timeout=7.5)
        self.assertTrue(frugal.is_initialized())
        self.assertIs(frugal.get_communicator(), comm)
        self.assertEqual((frugal.rank(), frugal.size()), (0, 1))
        self.assertEqual((comm.rank, comm.size, comm.transport),
                         (0, 1, "ucx"))
        self.assertEqual(comm.timeout, 7.5)
        with self.assertRaises(frugal.InvalidArgumentError) as cm:
            frugal.init(store=DictStore(), rank=0, world_size=1)
        self.assertIn("already initialized", str(cm.exception))
        frugal.shutdown()
        frugal.shutdown()
        self.assertTrue(comm.closed)
        with self.assertRaises(frugal.InvalidArgumentError):
            frugal.barrier(comm=comm)
        # A second init after shutdown uses fresh store keys.
        store = DictStore()
        frugal.init(store=store, rank=0, world_size=1)
        frugal.shutdown()
        frugal.init(store=store, rank=0, world_size=1)
        prefixes = {k.rsplit("/", 2)[0] for k in store.data}
        self.assertEqual(len(prefixes), 2)

    def test_timeout_from_environment(self):
        with mock.patch.dict(os.environ, {"FRUGAL_TIMEOUT": "3"}):
            self.assertEqual(frugal.init(store=DictStore(), rank=0,
                                         world_size=1).timeout, 3.0)

    def test_context_manager_closes(self):
        with frugal.init(store=DictStore(), rank=0, world_size=1) as comm:
            frugal.barrier()
        self.assertTrue(comm.closed)

    def test_bad_arguments(self):
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR",
                              "MASTER_PORT", "OMPI_COMM_WORLD_SIZE",
                              "PMIX_RANK", "FRUGAL_RANK", "FRUGAL_WORLD_SIZE",
                              "FRUGAL_TRANSPORT")}
        s = DictStore()
        cases = [
            (dict(), "FRUGAL_RANK"),
            (dict(transport="tcp", store=s, rank=0, world_size=1),
             "transport"),
            (dict(transport="mpi", store=s, rank=0, world_size=1), "mpirun"),
            (dict(store=s, rank=1, world_size=1), "rank"),
            (dict(store=s, rank=0, world_size=0), "world_size"),
            (dict(store=s, world_size=1), "RANK"),
            (dict(store=s, rank=0, world_size=1, timeout=-1), "timeout"),
            (dict(store=s, rank=0, world_size=1, timeout="5"), "timeout"),
            (dict(store=object(), rank=0, world_size=1), "store"),
        ]
        with mock.patch.dict(os.environ, clean, clear=True):
            for kwargs, name in cases:
                with self.assertRaises(frugal.InvalidArgumentError) as cm:
                    frugal.init(**kwargs)
                self.assertIn(name, str(cm.exception))
                self.assertFalse(frugal.is_initialized())
            with mock.patch.dict(os.environ, {"FRUGAL_RANK": "0",
                                              "FRUGAL_WORLD_SIZE": "1"}):
                with self.assertRaises(frugal.InvalidArgumentError) as cm:
                    frugal.init("mpi")
                self.assertIn("mpirun", str(cm.exception))

    def test_store_errors_become_frugal_errors(self):
        class Broken(DictStore):
            def get(self, key):
                raise RuntimeError("Socket Timeout waiting for " + key)
        with self.assertRaises(frugal.TimeoutError) as cm:
            frugal.init(store=Broken(), rank=0, world_size=1)
        self.assertIn("Socket Timeout", str(cm.exception))

        class Wrong(DictStore):
            def get(self, key):
                return "text"
        with self.assertRaises(frugal.InvalidArgumentError) as cm:
            frugal.init(store=Wrong(), rank=0, world_size=1)
        self.assertIn("expected bytes", str(cm.exception))


class OneRankTest(OneRankCase):
    def test_bad_tensors_are_named(self):
        t = torch.ones(4, 6)
        ro = np.ones(4, np.float32)
        ro.flags.writeable = False
        leaf = torch.ones(3, requires_grad=True)
        unaligned = np.frombuffer(bytearray(17), np.float32, 4, 1)
        cases = [
            (torch.ones(3, dtype=torch.float64), ["tensor", "torch.float64",
                                                  "tensor.float()"]),
            (torch.ones(3, dtype=torch.int32), ["tensor", "torch.int32"]),
            (t[:, ::2], ["tensor", "not contiguous"]),
            (t.t(), ["tensor", "not contiguous"]),
            (torch.ones(3, device="meta"), ["tensor", "device meta"]),
            (leaf, ["tensor", "requires grad", ".data"]),
            (torch.ones(3).to_sparse(), ["tensor", "layout"]),
            (np.ones(3), ["tensor", "float64"]),
            (np.ones((4, 4), np.float32)[:, 1], ["tensor", "C-contiguous"]),
            (ro, ["tensor", "read-only"]),
            ([1.0, 2.0], ["tensor", "list"]),
        ]
        if not unaligned.flags.aligned:
            cases.append((unaligned, ["tensor", "aligned"]))
        for bad, words in cases:
            self.assert_rejected(lambda: frugal.allreduce(bad), *words)
        self.assert_rejected(lambda: frugal.allreduce_async(t[:, ::2]),
                             "contiguous")
        self.assert_rejected(lambda: frugal.broadcast(t.t()), "contiguous")
        # .data of a leaf that requires grad is fine, and in place.
        frugal.allreduce(leaf.data, op="average")
        self.assertTrue(torch.equal(leaf.data, torch.ones(3)))

    def test_bad_options_are_named(self):
        t = torch.ones(8)
        self.assert_rejected(lambda: frugal.allreduce(t, op="max"), "op")
        self.assert_rejected(
            lambda: frugal.allreduce(t, algorithm="two_phase"), "algorithm",
            "ring")
        self.assert_rejected(lambda: frugal.allreduce(t, algorithm="x"),
                             "algorithm")
        self.assert_rejected(lambda: frugal.allreduce(t, seed=-1), "seed")
        self.assert_rejected(lambda: frugal.allreduce(t, timeout=0),
                             "timeout")
        self.assert_rejected(
            lambda: frugal.allreduce(t, compression="topk"),
            "state=frugal.State()", "error_feedback=False")
        self.assert_rejected(
            lambda: frugal.allreduce(t, compression="topk", state=3),
            "state")
        self.assert_rejected(lambda: frugal.allreduce(t, compression="zip"),
                             "method", "zip")
        self.assert_rejected(lambda: frugal.broadcast(t, root=1), "root")
        self.assert_rejected(lambda: frugal.allgather_object(lambda: 0),
                             "lambda")

    def test_results_in_place(self):
        t = torch.arange(6, dtype=torch.float32)
        self.assertIs(frugal.allreduce(t, op="average"), t)
        self.assertTrue(torch.equal(t, torch.arange(6, dtype=torch.float32)))
        a = np.arange(5, dtype=np.float32)
        h = frugal.allreduce_async(a, compression=frugal.Compression.fp16(),
                                   error_feedback=False)
        self.assertIs(h.wait(), a)
        self.assertTrue(h.done())
        self.assertEqual(frugal.allgather_object({"a": 1}), [{"a": 1}])
        i = torch.arange(4, dtype=torch.int64)
        self.assertIs(frugal.broadcast(i), i)

    def test_state(self):
        with self.assertRaises(frugal.InvalidArgumentError):
            frugal.State(1.5)
        s = frugal.State(0.5)
        self.assertEqual((s.steps, s.decay, s.bound), (0, 0.5, False))
        t = torch.randn(64)
        frugal.allreduce(t, compression=frugal.Compression.topk(0.1),
                         state=s)
        self.assertEqual(s.steps, 1)
        image = s.save()
        r = frugal.State()
        r.restore(image)
        self.assertEqual((r.steps, r.bound), (1, True))
        self.assertEqual(r.save(), image)
        with self.assertRaises(frugal.InvalidArgumentError):
            r.restore(b"not a state")
        s.reset()
        self.assertEqual((s.steps, s.bound), (1, False))

    def test_buckets(self):
        with self.assertRaises(frugal.InvalidArgumentError):
            frugal.Buckets(bucket_mb=0)
        with self.assertRaises(frugal.InvalidArgumentError):
            frugal.Buckets(non_finite="ignore")
        b = frugal.Buckets(compression="topk:density=0.5", bucket_mb=1e-4)
        self.assertEqual(b.add("a", 20), 0)
        self.assertEqual(b.add("b", 30), 1)
        with self.assertRaises(frugal.InvalidArgumentError):
            b.add("a", 5)
        with self.assertRaises(frugal.InvalidArgumentError):
            b.add("c", 0)
        ga, gb = torch.ones(20), torch.full((30,), 2.0)
        b.mark_ready("b", gb)
        with self.assertRaises(frugal.InvalidArgumentError):
            b.mark_ready(0, torch.ones(20, dtype=torch.float64))
        # The rejection ended the step (peers would have been told): "b"
        # is no longer marked, and the step starts again.
        with self.assertRaises(frugal.InvalidArgumentError):
            b.finish()
        b.mark_ready("b", gb)
        b.mark_ready(0, ga)
        b.finish()
        self.assertEqual((b.tensor_count, b.bucket_count), (2, 2))
        # Top-k of half of a constant tensor keeps half of it.
        self.assertEqual(int((ga != 0).sum()), 10)
        self.assertEqual(int((gb != 0).sum()), 15)
        state = b.state_dict()
        b2 = frugal.Buckets(compression="topk:density=0.5", bucket_mb=1e-4)
        b2.add("a", 20)
        b2.add("b", 30)
        b2.load_state_dict(state)
        self.assertEqual(b2.state_dict(), state)
        with self.assertRaises(frugal.InvalidArgumentError):
            b2.load_state_dict(b"junk")
        # A tensor marked twice, even after the last one: refused by name,
        # and the step is over (a finish() now has nothing marked).
        b2.mark_ready("a", torch.ones(20))
        b2.mark_ready("b", torch.ones(30))
        with self.assertRaisesRegex(frugal.InvalidArgumentError,
                                    "'a' was already marked"):
            b2.mark_ready(0, torch.ones(20))
        with self.assertRaisesRegex(frugal.InvalidArgumentError,
                                    "not marked ready"):
            b2.finish()


class SegmentsTest(OneRankCase):
    """allreduce(segments=...) and Buckets' own tensor boundaries."""

    @staticmethod
    def two_tensors() -> torch.Tensor:
        torch.manual_seed(3)
        t = torch.randn(3000)
        t[:1000] *= 1e-3
        return t

    def test_per_tensor_topk_selects_in_every_segment(self):
        C = frugal.Compression
        for scope, small in (("global", 0), ("per_tensor", 10)):
            t = self.two_tensors()
            frugal.allreduce(t, compression=C.topk(k=30, scope=scope),
                             error_feedback=False, segments=[1000, 2000])
            self.assertEqual(int((t[:1000] != 0).sum()), small, scope)
            self.assertEqual(int((t != 0).sum()), 30, scope)

    def test_no_scale_straddles(self):
        flat, split = self.two_tensors(), self.two_tensors()
        original = self.two_tensors()
        c = frugal.Compression.onebit()
        frugal.allreduce(flat, compression=c, error_feedback=False)
        frugal.allreduce(split, compression=c, error_feedback=False,
                         segments=(1000, 2000))
        # Signs times the small tensor's own mean magnitude, not the
        # large one's.
        scale = float(original[:1000].abs().mean())
        self.assertAlmostEqual(float(split[:1000].abs().max()), scale,
                               delta=scale * 1e-5)
        self.assertGreater(float(flat[:1000].abs().max()), 100 * scale)
        h = frugal.allreduce_async(self.two_tensors(), compression=c,
                                   error_feedback=False,
                                   segments=[1000, 2000])
        self.assertTrue(torch.equal(h.wait(), split))

    def test_bad_segments_are_named(self):
        t = torch.ones(8)
        for bad, words in (([3, 4], ["segments", "add up to 7"]),
                           ([8, 0], ["segments", "empty"]),
                           ([4, -4], ["segments", "entry 1"]),
                           ([4, 4.0], ["segments", "entry 1"]),
                           ("44", ["segments", "str"]),
                           (8, ["segments", "int"])):
            with self.assertRaises(frugal.InvalidArgumentError) as cm:
                frugal.allreduce(t, compression="qsgd",
                                 error_feedback=False, segments=bad)
            for w in words:
                self.assertIn(w, str(cm.exception))

    def test_state_binds_segments(self):
        s = frugal.State()
        c = frugal.Compression.ternary()
        frugal.allreduce(self.two_tensors(), compression=c, state=s,
                         segments=[1000, 2000])
        with self.assertRaises(frugal.MismatchError) as cm:
            frugal.allreduce(self.two_tensors(), compression=c, state=s,
                             segments=[2000, 1000])
        self.assertIn("segments", str(cm.exception))

    def test_buckets_pass_their_tensors(self):
        c = frugal.Compression.onebit()
        b = frugal.Buckets(compression=c)
        b.add("small", 1000)
        b.add("large", 2000)
        fused = self.two_tensors()
        small, large = fused[:1000].clone(), fused[1000:].clone()
        b.mark_ready("large", large)
        b.mark_ready("small", small)
        b.finish()
        s = frugal.State()
        frugal.allreduce(fused, compression=c, op="average", state=s,
                         segments=[1000, 2000])
        self.assertTrue(torch.equal(torch.cat([small, large]), fused))


def cpp_powersgd_defaults():
    """PowerSgdOptions' defaults as powersgd.hpp spells them."""
    text = (SOURCE_ROOT / "collectives" / "include" / "frugal" /
            "collectives" / "powersgd.hpp").read_text()

    def find(pattern):
        return re.search(pattern, text).group(1)
    return {
        "rank": int(find(r"int rank = (\d+);")),
        "min_compression_rate": float(
            find(r"double min_compression_rate = ([0-9.]+);")),
        "start_iter": int(find(r"std::uint64_t start_iter = (\d+);")),
        "seed": int(find(r"std::uint64_t seed = (\d+);")),
        "error_feedback": find(r"bool error_feedback = (\w+);") == "true",
        "op": find(r"ReduceOp op = ReduceOp::(\w+);").lower(),
        "non_finite": find(
            r"NonFiniteAction non_finite = NonFiniteAction::(\w+);").lower(),
    }


class PowerSGDTest(OneRankCase):
    def test_defaults_are_the_libraries(self):
        self.assertEqual(frugal.powersgd.POWERSGD_DEFAULTS,
                         cpp_powersgd_defaults())

    def test_bad_arguments_are_named(self):
        t = [torch.ones(16, 16)]
        state = frugal.PowerSGDState()
        cases = [
            (dict(rank=0), ["rank"]), (dict(rank=1.5), ["rank"]),
            (dict(min_compression_rate=0.5), ["min_compression_rate"]),
            (dict(min_compression_rate=float("nan")),
             ["min_compression_rate"]),
            (dict(start_iter=-1), ["start_iter"]), (dict(seed=-1), ["seed"]),
            (dict(op="max"), ["op"]), (dict(non_finite="x"), ["non_finite"]),
            (dict(error_feedback=1), ["error_feedback"]),
            (dict(timeout=0), ["timeout"]),
        ]
        for kwargs, words in cases:
            self.assert_rejected(
                lambda: frugal.powersgd_allreduce(t, state, **kwargs), *words)
        self.assert_rejected(lambda: frugal.powersgd_allreduce(
            [torch.ones(4), torch.ones(3, dtype=torch.float64)], state),
            "tensors[1]", "float64")
        self.assert_rejected(lambda: frugal.powersgd_allreduce(
            [torch.ones(4, 4).t()], state), "tensors[0]", "contiguous")
        self.assert_rejected(lambda: frugal.powersgd_allreduce(
            torch.ones(4), state), "tensors", "list")
        self.assert_rejected(lambda: frugal.powersgd_allreduce(
            t, frugal.State()), "state", "PowerSGDState")
        whole = torch.ones(32)
        self.assert_rejected(lambda: frugal.powersgd_allreduce(
            [whole[:20], whole[10:]], state), "share memory")
        self.assertFalse(state.bound)  # nothing ran

    def test_one_rank_and_state(self):
        # One rank: the average is the input, exact for vectors and, at
        # rank 2, for a matrix of rank 2.
        g = torch.Generator().manual_seed(3)
        u = torch.randn(12, 2, generator=g)
        v = torch.randn(2, 5, 3, generator=g)
        m = (u @ v.reshape(2, 15)).reshape(12, 5, 3)
        b = torch.randn(12, generator=g)
        ts = [m.clone(), b.clone()]
        state = frugal.PowerSGDState()
        stats = frugal.powersgd_allreduce(ts, state, rank=2, start_iter=0)
        self.assertEqual(stats["compressed_tensors"], 1)
        self.assertFalse(stats["dense_step"])
        self.assertTrue(torch.equal(ts[1], b))
        self.assertTrue(torch.allclose(ts[0], m, rtol=1e-4, atol=1e-4))
        self.assertEqual(state.q(0).shape, (15, 2))
        self.assertEqual(state.residual(0).shape, (12, 15))
        self.assertIsNone(state.q(1))
        with self.assertRaises(frugal.InvalidArgumentError):
            state.q(2)
        self.assertEqual((state.steps, state.bound), (1, True))
        image = state.save()
        r = frugal.PowerSGDState()
        r.restore(image)
        self.assertEqual(r.save(), image)
        self.assertIn("steps=1", repr(r))
        with self.assertRaises(frugal.InvalidArgumentError):
            r.restore(image[:-1])
        self.assertEqual(r.save(), image)  # unchanged
        # Another layout on a bound state: MismatchError.
        with self.assertRaises(frugal.MismatchError):
            frugal.powersgd_allreduce([torch.ones(12, 15)], r, rank=2,
                                      start_iter=0)


class ShardedTest(OneRankCase):
    """reduce_scatter, allgather and shard_range on one rank (the
    two-rank results are checked by worker.py)."""

    def test_shard_range(self):
        self.assertEqual(frugal.shard_range(10), (0, 10))
        self.assertEqual([frugal.shard_range(10, rank=r, size=3)
                          for r in range(3)], [(0, 4), (4, 3), (7, 3)])
        for bad in (dict(rank=3, size=3), dict(rank=0, size=0)):
            with self.assertRaises(frugal.InvalidArgumentError):
                frugal.shard_range(10, **bad)
        with self.assertRaises(frugal.InvalidArgumentError):
            frugal.shard_range(-1)

    def test_one_rank_equals_the_two_phase_allreduce(self):
        g = torch.Generator().manual_seed(5)
        states = [frugal.State() for _ in range(3)]
        for _ in range(3):
            x = torch.randn(300, generator=g)
            whole = x.clone()
            shard = torch.empty(300)
            self.assertIs(frugal.reduce_scatter(
                x, shard, compression="qsgd", state=states[0]), shard)
            self.assertIs(frugal.allgather(
                shard, x, compression="qsgd", state=states[1]), x)
            frugal.allreduce(whole, compression="qsgd", state=states[2],
                             algorithm="two_phase")
            self.assertTrue(torch.equal(x, whole))
        self.assertEqual([s.steps for s in states], [3, 3, 3])
        dense = np.arange(7, dtype=np.float32)
        out = np.zeros(7, np.float32)
        frugal.reduce_scatter(dense.copy(), out)
        self.assertTrue(np.array_equal(out, dense))

    def test_bad_arguments_are_named(self):
        t = torch.ones(10)
        for call, words in (
                (lambda: frugal.reduce_scatter(t, torch.ones(9)),
                 ["output"]),
                (lambda: frugal.reduce_scatter(t, t.double()), ["shard"]),
                (lambda: frugal.reduce_scatter(
                    t, torch.ones(10), compression="topk",
                    state=frugal.State()), ["compression.method"]),
                (lambda: frugal.allgather(
                    torch.ones(10), t, compression="onebit"), ["state"]),
                (lambda: frugal.allgather(
                    torch.ones(10), t, non_finite="zero",
                    compression="fp16", error_feedback=False),
                 ["non_finite"])):
            with self.assertRaises(frugal.InvalidArgumentError) as cm:
                call()
            for w in words:
                self.assertIn(w, str(cm.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
