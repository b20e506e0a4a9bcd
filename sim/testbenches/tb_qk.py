"""The Q.K array (`hw/attention/qk.py`) with its K buffer, and its cocotb testbench.

`QKTop(config, init=None)` is the design under test of both the Amaranth-simulator tests and the
cocotb tests (`tests/test_qk.py`): the `QKArray` plus the K buffer (a `lib.memory.Memory` of
`k_depth(cfg)` (= capacity) words, optionally initialised from `init`) and a write stream into it:

    load : In(stream.Signature(ArrayLayout(signed(W), M)))   one K word per beat, always ready,
           written at consecutive addresses from 0; the address returns to 0 after the last word
           and whenever a ``q`` beat is transferred (so the next load starts at word 0)
    q, d_log2, n, o, busy, macs : those of `QKArray`

Testbench (run by `spatten.sim.infra.testbench.run_testbench`; settings: ``config`` (the
`AttentionConfig` fields), ``seed``, ``runs``): driver `StreamSource` on ``load`` and ``q`` (random
idle cycles when asked), monitor `StreamSink` on ``o`` (random backpressure when asked; it checks
the stream rules), transaction-level model `spatten.golden.attention.qk` and
`spatten.golden.qk_cycles.qk_cycle_model`, in-order checker per query. Without gaps and
backpressure the cycles from the first ``q`` transfer to the last ``o`` transfer of a batch of
back-to-back queries must equal the cycle model exactly. The buffer with its ``load`` stream and
the bench (`spatten.sim.infra.bench.UnitBench`) are the shared ones.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig
from spatten.golden.attention import qk as golden_qk
from spatten.golden.qk_cycles import qk_cycle_model
from spatten.hw.attention.qk import QKArray, dots_layout, k_word_layout, q_layout

from ..infra.bench import UnitBench, report, tb_config
from .unit_top import BufferedUnitTop, lane_beats, words_of

__all__ = ["QKTop", "k_words", "q_word", "expected_beats", "random_batch", "edge_batches"]


class QKTop(BufferedUnitTop):
    """`QKArray` with its K buffer and a ``load`` stream into the buffer (see module doc)."""

    def __init__(self, config: AttentionConfig, init=None):
        self.config = config
        self.qk = qk = QKArray(config=config)
        super().__init__(qk, {
            "q": In(stream.Signature(q_layout(config))),
            "d_log2": In(qk.d_log2.shape()),
            "n": In(qk.n.shape()),
            "o": Out(stream.Signature(dots_layout(config))),
        }, name="qk", rd="k_rd", mem="kmem", init=init)

    def restart(self):
        return self.q.valid & self.q.ready

    def connect(self, m):
        wiring.connect(m, wiring.flipped(self.q), self.qk.q)
        wiring.connect(m, self.qk.o, wiring.flipped(self.o))
        m.d.comb += [self.qk.d_log2.eq(self.d_log2), self.qk.n.eq(self.n)]


# ---------------------------------------------------------------------------------- models
def k_words(cfg: AttentionConfig, k: np.ndarray) -> list[list[int]]:
    """K rows (n, d) stored flat as buffer words of M elements (the last one zero-padded):
    word w holds flat elements [w*M, (w+1)*M)."""
    return words_of(k, cfg.qk_mults)


def q_word(cfg: AttentionConfig, q, fill: int = 0, rng: random.Random | None = None) -> list:
    """A ``q`` beat: q (d,) then M-d elements that must be ignored (random when `rng`)."""
    q = [int(x) for x in q]
    rest = cfg.qk_mults - len(q)
    if rng is not None:
        return q + [rng.randint(cfg.data_min, cfg.data_max) for _ in range(rest)]
    return q + [fill] * rest


def expected_beats(cfg: AttentionConfig, dots) -> list[dict]:
    """The ``o`` beats of one query's dots (lanes >= count are 0)."""
    return lane_beats(dots, cfg.softmax_lanes)


def random_batch(cfg: AttentionConfig, rng: np.random.Generator, d: int, n: int, queries: int,
                 kind: str = "uniform"):
    """(k (n, d), q (queries, d)) with values of `kind`: uniform, min, max, mixed extremes."""
    lo, hi = cfg.data_min, cfg.data_max
    if kind == "min":
        return np.full((n, d), lo), np.full((queries, d), lo)
    if kind == "max":
        return np.full((n, d), hi), np.full((queries, d), hi)
    if kind == "minmax":       # q = min, k = max: the most negative dot
        return np.full((n, d), hi), np.full((queries, d), lo)
    if kind == "mixed":
        return rng.choice([lo, hi, 0, -1, 1], (n, d)), rng.choice([lo, hi], (queries, d))
    return rng.integers(lo, hi + 1, (n, d)), rng.integers(lo, hi + 1, (queries, d))


def edge_batches(cfg: AttentionConfig, rng: np.random.Generator) -> list[tuple]:
    """(label, d, k, q) batches of back-to-back queries covering the contract's edge cases:
    every d; n = 1, n not a multiple of g or S, n = capacity; extreme values."""
    N, M, S = cfg.capacity, cfg.qk_mults, cfg.softmax_lanes
    out = []
    dims = [1 << i for i in range(3, M.bit_length())]
    for d in dims:
        g = M // d
        full = N                             # the most keys the buffer holds, at any d
        big = max(g, S)
        units = [u for u in (g, S) if u > 1]
        odd = next(n for n in range(big + 1, 4 * big + 4) if all(n % u for u in units))
        for n, queries, kind in ((1, 2, "uniform"), (min(odd, full), 3, "uniform"),
                                 (full, 1, "uniform"), (min(full, 2 * g + 1), 2, "mixed")):
            k, q = random_batch(cfg, rng, d, n, queries, kind)
            out.append((f"d={d} n={n} x{queries} {kind}", d, k, q))
    d = dims[-1]
    for kind in ("min", "max", "minmax"):
        k, q = random_batch(cfg, rng, d, min(N, 5), 2, kind)
        out.append((f"d={d} n={min(N, 5)} {kind}", d, k, q))
    d = dims[0]
    k, q = random_batch(cfg, rng, d, min(N, 7), 2, "min")
    out.append((f"d={d} n={min(N, 7)} min", d, k, q))
    return out


# ---------------------------------------------------------------------------------- cocotb
CFG, SEED, _SETTINGS = tb_config(runs=8)
RUNS = int(_SETTINGS["runs"])


class Bench(UnitBench):
    INPUTS = {"load__valid": 0, "q__valid": 0, "o__ready": 0,
              "d_log2": CFG.head_dims[0].bit_length() - 1, "n": 1}

    def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
        super().__init__(dut, ("q", q_layout(CFG)), ("o", dots_layout(CFG)), idle=idle,
                         stall=stall, seed=seed, load=k_word_layout(CFG))

    async def batch(self, d, k, q, timed=False, rng=None) -> list[str]:
        """Load k, run the queries of q back to back, check every beat (and the cycles when
        `timed`); return the problems found."""
        dut = self.dut
        await self.fill(k_words(CFG, k))
        n = k.shape[0]
        dut.d_log2.value = d.bit_length() - 1
        dut.n.value = n
        macs0 = int(dut.macs.value)
        log = self.log_transfers("q", "o") if timed else None
        got = await self.exchange([q_word(CFG, row, rng=rng) for row in q],
                                  self.sink.recv_packet, len(q), 40 * (n + 8) * len(q) + 200)
        errs = []
        ref = golden_qk(CFG, q, k)
        for i, packet in enumerate(got):
            want = expected_beats(CFG, ref[i])
            if packet != want:
                pad_got, pad_want = packet + [None] * len(want), want + [None] * len(packet)
                bad = next(j for j, (a, b) in enumerate(zip(pad_got, pad_want, strict=True))
                           if a != b)
                errs.append(f"query {i}: beat {bad} of {len(packet)}: "
                            f"{packet[bad] if bad < len(packet) else None} != "
                            f"{want[bad] if bad < len(want) else None}")
        if len(got) < len(q):
            return errs + [f"query {len(got)}: no complete packet (hang)"]
        errs += await self.settle(macs=(macs0, n * d * len(q)))
        if timed:
            model = qk_cycle_model(CFG, n, d, len(q))
            cycles = log["o"][-1] - log["q"][0]
            if cycles != model:
                errs.append(f"cycles {cycles} != model {model}")
        return errs


def _random_cases(rng, runs):
    out = []
    for r in range(runs):
        d = int(rng.choice([1 << i for i in range(3, CFG.qk_mults.bit_length())]))
        n = int(rng.integers(1, CFG.capacity + 1))
        queries = int(rng.integers(1, 4))
        kind = "mixed" if r % 4 == 3 else "uniform"
        k, q = random_batch(CFG, rng, d, n, queries, kind)
        out.append((f"random#{r} d={d} n={n} x{queries} {kind}", d, k, q))
    return out


async def _run(bench, cases, timed, rng=None):
    errs = []
    for label, d, k, q in cases:
        errs += [f"{label}: {e}" for e in await bench.batch(d, k, q, timed=timed, rng=rng)]
    return errs


@cocotb.test()
async def test_edge_cases(dut):
    """Every d, n = 1 / odd / capacity, extreme values; back to back, cycles exact."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED)
    cases = edge_batches(CFG, rng)
    errs = await _run(bench, cases, timed=True, rng=random.Random(SEED))
    report(dut, SEED, errs, f"{len(cases)} edge-case batches")


@cocotb.test()
async def test_random(dut):
    """Seeded random batches, cycles exact."""
    bench = await Bench.start(dut)
    cases = _random_cases(np.random.default_rng(SEED + 1), RUNS)
    errs = await _run(bench, cases, timed=True)
    report(dut, SEED, errs, f"{len(cases)} random batches")


@cocotb.test()
async def test_gaps_and_backpressure(dut):
    """Edge cases and random batches under random q gaps and o backpressure."""
    bench = await Bench.start(dut, idle=0.3, stall=0.4, seed=SEED + 2)
    rng = np.random.default_rng(SEED + 2)
    cases = edge_batches(CFG, rng)[::2] + _random_cases(rng, max(2, RUNS // 2))
    errs = await _run(bench, cases, timed=False)
    bench.src.idle_prob, bench.sink.stall_prob = 0.0, 0.8
    errs += await _run(bench, _random_cases(rng, 2), timed=False)
    if not (bench.src.idle_cycles and bench.sink.stall_cycles):
        errs.append("no gap or stall happened")
    report(dut, SEED, errs, f"{len(cases) + 2} batches under gaps and backpressure")
