"""The Q.K array (`hw/qk.py`) with its K buffer, and its cocotb testbench.

`QKTop(config, init=None)` is the design under test of both the Amaranth-simulator tests and the
cocotb tests (`tests/test_qk.py`): the `QKArray` plus the K buffer (a `lib.memory.Memory` of
`k_depth(cfg)` (= capacity) words, optionally initialised from `init`) and a write stream into it:

    load : In(stream.Signature(ArrayLayout(signed(W), M)))   one K word per beat, always ready,
           written at consecutive addresses from 0; the address returns to 0 after the last word
           and whenever a ``q`` beat is transferred (so the next load starts at word 0)
    q, d_log2, n, o, busy, macs : those of `QKArray`

Testbench (run by `spatten.sim.unit_run.unit_selftest`; settings: ``config`` (the
`AttentionConfig` fields), ``seed``, ``runs``): driver `StreamSource` on ``load`` and ``q`` (random
idle cycles when asked), monitor `StreamSink` on ``o`` (random backpressure when asked; it checks
the stream rules), transaction-level model `spatten.golden.attention.qk` and
`spatten.golden.qk_cycles.qk_cycle_model`, in-order checker per query. Without gaps and
backpressure the cycles from the first ``q`` transfer to the last ``o`` transfer of a batch of
back-to-back queries must equal the cycle model exactly.
"""

from __future__ import annotations

import random

import numpy as np
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig
from spatten.hw.qk import QKArray, dots_layout, k_depth, k_word_layout, q_layout

__all__ = ["QKTop", "k_words", "q_word", "expected_beats", "random_batch", "edge_batches"]


class QKTop(wiring.Component):
    """`QKArray` with its K buffer and a ``load`` stream into the buffer (see module doc)."""

    def __init__(self, config: AttentionConfig, init=None):
        self.qk = QKArray(config=config)
        self.config = config
        self.init = [] if init is None else list(init)
        super().__init__({
            "load": In(stream.Signature(k_word_layout(config))),
            "q": In(stream.Signature(q_layout(config))),
            "d_log2": In(self.qk.d_log2.shape()),
            "n": In(self.qk.n.shape()),
            "o": Out(stream.Signature(dots_layout(config))),
            "busy": Out(1),
            "macs": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        m.submodules.qk = qk = self.qk
        depth = k_depth(cfg)
        m.submodules.kmem = mem = Memory(shape=k_word_layout(cfg), depth=depth, init=self.init)
        wr = mem.write_port()
        wiring.connect(m, qk.k_rd, mem.read_port())
        waddr = Signal(range(depth))
        m.d.comb += [
            self.load.ready.eq(1),
            wr.en.eq(self.load.valid),
            wr.addr.eq(waddr),
            wr.data.eq(self.load.payload),
        ]
        with m.If(self.load.valid):
            m.d.sync += waddr.eq(Mux(waddr == depth - 1, 0, waddr + 1))
        with m.If(self.q.valid & self.q.ready):
            m.d.sync += waddr.eq(0)
        wiring.connect(m, wiring.flipped(self.q), qk.q)
        wiring.connect(m, qk.o, wiring.flipped(self.o))
        m.d.comb += [
            qk.d_log2.eq(self.d_log2),
            qk.n.eq(self.n),
            self.busy.eq(qk.busy),
            self.macs.eq(qk.macs),
        ]
        return m


# ---------------------------------------------------------------------------------- models
def k_words(cfg: AttentionConfig, k: np.ndarray) -> list[list[int]]:
    """K rows (n, d) stored flat as buffer words of M elements (the last one zero-padded):
    word w holds flat elements [w*M, (w+1)*M)."""
    M = cfg.qk_mults
    flat = np.asarray(k, dtype=np.int64).reshape(-1)
    words = -(-flat.size // M)
    flat = np.concatenate([flat, np.zeros(words * M - flat.size, dtype=np.int64)])
    return [[int(x) for x in flat[w * M:(w + 1) * M]] for w in range(words)]


def q_word(cfg: AttentionConfig, q, fill: int = 0, rng: random.Random | None = None) -> list:
    """A ``q`` beat: q (d,) then M-d elements that must be ignored (random when `rng`)."""
    q = [int(x) for x in q]
    rest = cfg.qk_mults - len(q)
    if rng is not None:
        return q + [rng.randint(cfg.data_min, cfg.data_max) for _ in range(rest)]
    return q + [fill] * rest


def expected_beats(cfg: AttentionConfig, dots) -> list[dict]:
    """The ``o`` beats of one query's dots (lanes >= count are 0)."""
    S = cfg.softmax_lanes
    dots = [int(x) for x in dots]
    out = []
    for lo in range(0, len(dots), S):
        chunk = dots[lo:lo + S]
        out.append({"data": chunk + [0] * (S - len(chunk)), "count": len(chunk),
                    "last": int(lo + S >= len(dots))})
    return out


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
try:
    import cocotb
    from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
except ImportError:  # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from spatten.golden.attention import qk as golden_qk
    from spatten.golden.qk_cycles import qk_cycle_model

    from .streams import StreamSink, StreamSource, clock_and_reset
    from .unit_run import tb_settings

    _SETTINGS = tb_settings()
    CFG = AttentionConfig(**_SETTINGS.get("config", {}))
    SEED = int(_SETTINGS.get("seed", 1))
    RUNS = int(_SETTINGS.get("runs", 8))
    PERIOD = 10.0

    class Bench:
        def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
            self.dut = dut
            self.load = StreamSource(dut, "load", dut.clk, k_word_layout(CFG))
            self.src = StreamSource(dut, "q", dut.clk, q_layout(CFG), idle_prob=idle,
                                    rng=random.Random(seed + 1))
            self.sink = StreamSink(dut, "o", dut.clk, dots_layout(CFG), stall_prob=stall,
                                   rng=random.Random(seed + 2))
            self.q_cycles: list[int] = []
            self.o_cycles: list[int] = []
            self._mon = None

        async def _monitor(self):
            dut = self.dut
            edge, settled = RisingEdge(dut.clk), ReadOnly()
            cycle = 0
            while True:
                await settled
                if dut.q__valid.value == 1 and dut.q__ready.value == 1:
                    self.q_cycles.append(cycle)
                if dut.o__valid.value == 1 and dut.o__ready.value == 1:
                    self.o_cycles.append(cycle)
                await edge
                cycle += 1

        async def batch(self, d, k, q, timed=False, rng=None) -> list[str]:
            """Load k, run the queries of q back to back, check every beat (and the cycles when
            `timed`); return the problems found."""
            dut = self.dut
            await self.load.send(k_words(CFG, k))
            await RisingEdge(dut.clk)
            n = k.shape[0]
            dut.d_log2.value = d.bit_length() - 1
            dut.n.value = n
            macs0 = int(dut.macs.value)
            if timed:
                self.q_cycles, self.o_cycles = [], []
                self._mon = cocotb.start_soon(self._monitor())
            self.src.send_nowait([q_word(CFG, row, rng=rng) for row in q])
            errs = []
            ref = golden_qk(CFG, q, k)
            limit = 40 * (n + 8) * len(q) + 200
            for i in range(len(q)):
                task = cocotb.start_soon(self.sink.recv_packet())
                waited = 0
                while not task.done():
                    await ClockCycles(dut.clk, 16)
                    waited += 16
                    if waited > limit:
                        task.cancel()
                        return errs + [f"query {i}: no complete packet (hang)"]
                got = task.result()
                want = expected_beats(CFG, ref[i])
                if got != want:
                    bad = next(j for j, (a, b) in enumerate(zip(got + [None] * len(want),
                                                                 want + [None] * len(got)))
                               if a != b)
                    errs.append(f"query {i}: beat {bad} of {len(got)}: "
                                f"{got[bad] if bad < len(got) else None} != "
                                f"{want[bad] if bad < len(want) else None}")
            await self.src.wait_idle()
            await ClockCycles(dut.clk, 2)
            await ReadOnly()
            if self._mon is not None:
                self._mon.cancel()
                self._mon = None
            if int(dut.busy.value):
                errs.append("busy after the last beat")
            if int(dut.o__valid.value):
                errs.append("extra output beat")
            macs = (int(dut.macs.value) - macs0) % (1 << 32)
            if macs != n * d * len(q):
                errs.append(f"macs {macs} != n*d*queries = {n * d * len(q)}")
            if timed:
                model = qk_cycle_model(CFG, n, d, len(q))
                got = self.o_cycles[-1] - self.q_cycles[0]
                if got != model:
                    errs.append(f"cycles {got} != model {model}")
            await RisingEdge(dut.clk)
            return errs

    async def start(dut, idle=0.0, stall=0.0, seed=SEED) -> Bench:
        dut.load__valid.value = 0
        dut.q__valid.value = 0
        dut.o__ready.value = 0
        dut.d_log2.value = 3
        dut.n.value = 1
        await clock_and_reset(dut, PERIOD)
        return Bench(dut, idle, stall, seed)

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

    async def _run(dut, bench, cases, timed, rng=None):
        errs = []
        for label, d, k, q in cases:
            errs += [f"{label}: {e}" for e in await bench.batch(d, k, q, timed=timed, rng=rng)]
        return errs

    def _report(dut, errs, what):
        dut._log.info("seed %d: %s", SEED, what)
        assert not errs, f"seed {SEED}: {len(errs)} problems, first: " + "; ".join(errs[:5])

    @cocotb.test()
    async def test_edge_cases(dut):
        """Every d, n = 1 / odd / capacity, extreme values; back to back, cycles exact."""
        bench = await start(dut)
        rng = np.random.default_rng(SEED)
        cases = edge_batches(CFG, rng)
        errs = await _run(dut, bench, cases, timed=True, rng=random.Random(SEED))
        _report(dut, errs, f"{len(cases)} edge-case batches")

    @cocotb.test()
    async def test_random(dut):
        """Seeded random batches, cycles exact."""
        bench = await start(dut)
        cases = _random_cases(np.random.default_rng(SEED + 1), RUNS)
        errs = await _run(dut, bench, cases, timed=True)
        _report(dut, errs, f"{len(cases)} random batches")

    @cocotb.test()
    async def test_gaps_and_backpressure(dut):
        """Edge cases and random batches under random q gaps and o backpressure."""
        bench = await start(dut, idle=0.3, stall=0.4, seed=SEED + 2)
        rng = np.random.default_rng(SEED + 2)
        cases = edge_batches(CFG, rng)[::2] + _random_cases(rng, max(2, RUNS // 2))
        errs = await _run(dut, bench, cases, timed=False)
        bench.src.idle_prob, bench.sink.stall_prob = 0.0, 0.8
        errs += await _run(dut, bench, _random_cases(rng, 2), timed=False)
        if not (bench.src.idle_cycles and bench.sink.stall_cycles):
            errs.append("no gap or stall happened")
        _report(dut, errs, f"{len(cases) + 2} batches under gaps and backpressure")
