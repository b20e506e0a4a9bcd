"""The prob x V array (`hw/attention/pv.py`) with its V buffer, and its cocotb testbench.

`PvTop(config, init=None)` is the design under test of both the Amaranth-simulator tests and the
cocotb tests (`tests/test_pv.py`): the `ProbV` array plus the V buffer (a `lib.memory.Memory` of
`v_depth(cfg)` words, optionally initialised from `init`) and a write stream into it:

    load : In(stream.Signature({data: ArrayLayout(signed(W), Mv), last: 1}))   always ready; one
           V word per beat at consecutive addresses from 0; the address returns to 0 after a
           beat with last = 1 (and after the last word of the buffer)
    i    : In(stream.Signature(top_input_layout(cfg)))   the array's ``i`` beat plus its
           ``d_log2`` and ``renorm`` (wired to the array's ports, which sample them at a
           packet's first beat)
    o    : Out(stream.Signature(top_output_layout(cfg)))   the array's ``o`` beat {data, psum}
           plus ``t_in``, the cycle of the query's first ``i`` transfer, and ``t_out``, the
           cycle in which the beat first appeared on ``o`` (cycles counted from reset)
    busy, macs : those of `ProbV`

Testbench (run by `spatten.sim.infra.testbench.run_testbench`; settings: ``config`` (the
`AttentionConfig` fields), ``seed``, ``runs``): driver `StreamSource` on ``load`` and ``i`` (random
idle cycles when asked), monitor `StreamSink` on ``o`` (random backpressure when asked; it checks
the stream rules), transaction-level model `spatten.golden.attention.pv` and
`spatten.golden.pv_cycles.pv_schedule`, in-order checker per query. Without gaps and
backpressure every query's ``t_out - t_in`` and the spacing of the ``o`` beats must equal the
cycle model exactly. The buffer with its ``load`` stream (`unit_top.BufferedUnitTop`) and the
bench (`spatten.sim.infra.bench.UnitBench`) are the shared ones.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from amaranth.hdl import Mux, Signal
from amaranth.lib import data, stream
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig
from spatten.golden.pv_cycles import pv_schedule
from spatten.hw.attention.pv import ProbV, input_layout, output_layout, v_depth, v_word_layout

from ..infra.bench import UnitBench, report, tb_config
from .unit_top import BufferedUnitTop, random_elements, words_of

__all__ = ["PvTop", "top_input_layout", "top_output_layout", "load_layout", "v_words",
           "query_beats", "make_query", "expected_beat", "STAMP_FIFO_DEPTH"]

STAMP_FIFO_DEPTH = 16


def _log2(x: int) -> int:
    return x.bit_length() - 1


def top_input_layout(cfg: AttentionConfig) -> data.StructLayout:
    fields = dict(input_layout(cfg).members)
    fields["d_log2"] = range(_log2(cfg.pv_mults) + 1)
    fields["renorm"] = 1
    return data.StructLayout(fields)


def top_output_layout(cfg: AttentionConfig) -> data.StructLayout:
    fields = dict(output_layout(cfg).members)
    fields["t_in"] = 32
    fields["t_out"] = 32
    return data.StructLayout(fields)


def load_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({"data": v_word_layout(cfg), "last": 1})


class PvTop(BufferedUnitTop):
    """`ProbV` with its V buffer, a ``load`` stream into the buffer and cycle stamps on ``o``
    (see the module docstring)."""

    def __init__(self, config: AttentionConfig, init=None, p_sum_bits=None):
        self.config = config
        self.pv = ProbV(config=config, p_sum_bits=p_sum_bits)
        super().__init__(self.pv, {
            "i": In(stream.Signature(top_input_layout(config))),
            "o": Out(stream.Signature(top_output_layout(config))),
        }, name="pv", rd="v_rd", mem="vmem", init=init, framed=True)

    def connect(self, m):
        pv = self.pv
        ip = self.i.payload
        m.d.comb += [
            pv.i.valid.eq(self.i.valid),
            self.i.ready.eq(pv.i.ready),
            pv.i.payload.index.eq(ip.index),
            pv.i.payload.prob.eq(ip.prob),
            pv.i.payload.count.eq(ip.count),
            pv.i.payload.last.eq(ip.last),
            pv.d_log2.eq(ip.d_log2),
            pv.renorm.eq(ip.renorm),
        ]

        # cycle stamps
        cycle = Signal(32)
        m.d.sync += cycle.eq(cycle + 1)
        in_first = Signal(init=1)
        i_take = self.i.valid & self.i.ready
        with m.If(i_take):
            m.d.sync += in_first.eq(ip.last)
        m.submodules.stamps = fifo = SyncFIFOBuffered(width=32, depth=STAMP_FIFO_DEPTH)
        o_take = self.o.valid & self.o.ready
        m.d.comb += [
            fifo.w_en.eq(i_take & in_first),
            fifo.w_data.eq(cycle),
            fifo.r_en.eq(o_take),
        ]
        held = Signal()          # the beat on o was there in the previous cycle too
        stamp = Signal(32)
        t_out = Signal(32)
        m.d.comb += t_out.eq(Mux(held, stamp, cycle))
        m.d.sync += [held.eq(self.o.valid & ~self.o.ready), stamp.eq(t_out)]
        op = self.o.payload
        m.d.comb += [
            self.o.valid.eq(pv.o.valid),
            pv.o.ready.eq(self.o.ready),
            op.data.eq(pv.o.payload.data),
            op.psum.eq(pv.o.payload.psum),
            op.t_in.eq(fifo.r_data),
            op.t_out.eq(t_out),
        ]


# ---------------------------------------------------------------------------------- models
def v_words(cfg: AttentionConfig, flat) -> list[list[int]]:
    """The V buffer's words from its flat elements (zero-padded to whole words)."""
    return words_of(flat, cfg.pv_mults)


def query_beats(cfg: AttentionConfig, kept, probs, d: int, renorm: bool,
                rng: random.Random | None = None) -> list[dict]:
    """The ``i`` beats of one query (lanes >= count hold random junk when `rng` is given)."""
    S = cfg.softmax_lanes
    kept = [int(x) for x in kept]
    probs = [int(x) for x in probs]
    dl = _log2(d)

    def junk(n, hi):
        return [rng.randrange(hi) if rng else 0 for _ in range(n)]

    if not kept:
        return [{"index": junk(S, cfg.capacity), "prob": junk(S, 1 << 16), "count": 0,
                 "last": 1, "d_log2": dl, "renorm": int(renorm)}]
    out = []
    for lo in range(0, len(kept), S):
        idx, p = kept[lo:lo + S], probs[lo:lo + S]
        pad = S - len(idx)
        out.append({"index": idx + junk(pad, cfg.capacity), "prob": p + junk(pad, 1 << 16),
                    "count": len(idx), "last": int(lo + S >= len(kept)), "d_log2": dl,
                    "renorm": int(renorm)})
    return out


def make_query(cfg: AttentionConfig, rng: np.random.Generator, d: int, n: int, kind: str,
               renorm: bool = False) -> tuple:
    """(kept, probs, d, renorm) for a query over the first `n` rows of dimension d: kind is
    dense (every row), sparse (a random subset), contiguous (a random run), single, empty,
    zero (kept rows with probability 0), max (every row at 65535), or softmaxish (dense,
    probabilities summing to about 2**16)."""
    if kind in ("dense", "max", "softmaxish"):
        kept = np.arange(n)
    elif kind == "sparse":
        k = int(rng.integers(1, n + 1))
        kept = np.sort(rng.choice(n, k, replace=False))
    elif kind == "contiguous":
        k = int(rng.integers(1, n + 1))
        lo = int(rng.integers(0, n - k + 1))
        kept = np.arange(lo, lo + k)
    elif kind == "single":
        kept = np.array([int(rng.integers(0, n))])
    elif kind == "empty":
        kept = np.array([], dtype=np.int64)
    elif kind == "zero":
        kept = np.sort(rng.choice(n, min(n, 5), replace=False))
    else:
        raise ValueError(kind)
    if kind == "max":
        probs = np.full(kept.size, 65535)
    elif kind == "zero":
        probs = np.zeros(kept.size, dtype=np.int64)
    elif kind == "softmaxish":
        w = rng.exponential(1.0, kept.size) ** 3
        probs = np.minimum(np.round(w / w.sum() * 65536), 65535).astype(np.int64)
    else:
        probs = rng.integers(0, 1 << 16, kept.size)
    return [int(x) for x in kept], [int(x) for x in probs], d, bool(renorm)


def expected_beat(cfg: AttentionConfig, flat, query) -> dict:
    """The ``o`` beat {data, psum} of one query from the golden model."""
    from spatten.golden.attention import pv as golden_pv

    kept, probs, d, renorm = query
    flat = np.asarray(flat, dtype=np.int64).reshape(-1)
    rows = flat[:flat.size // d * d].reshape(-1, d)
    v = rows[np.asarray(kept, dtype=np.int64)] if kept else np.zeros((0, d), dtype=np.int64)
    res = golden_pv(cfg, np.asarray(probs, dtype=np.int64), v, renorm)
    out = [int(x) for x in res.out] + [0] * (cfg.pv_mults - d)
    return {"data": out, "psum": int(res.psum)}


# ---------------------------------------------------------------------------------- cocotb
CFG, SEED, _SETTINGS = tb_config(runs=6)
RUNS = int(_SETTINGS["runs"])
DIMS = [d for d in CFG.head_dims if d <= CFG.pv_mults]


def rows_of(d):
    """V rows of dimension d the buffer holds (every d: capacity words)."""
    return CFG.capacity


class Bench(UnitBench):
    INPUTS = {"load__valid": 0, "i__valid": 0, "o__ready": 0}

    def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
        super().__init__(dut, ("i", top_input_layout(CFG)), ("o", top_output_layout(CFG)),
                         idle=idle, stall=stall, seed=seed, load=load_layout(CFG))
        self.rng = random.Random(seed + 3)

    async def load_v(self, flat):
        await self.fill(v_words(CFG, flat))

    async def batch(self, flat, queries, timed=False) -> list[str]:
        """Run `queries` back to back on the loaded V; check every beat against the golden
        model (and the cycle stamps against the model when `timed`)."""
        macs0 = int(self.dut.macs.value)
        beats = []
        for kept, probs, d, renorm in queries:
            beats += query_beats(CFG, kept, probs, d, renorm, rng=self.rng)
        limit = 200 + sum(4 * len(q[0]) + 2 * q[2] + 64 for q in queries) * 8
        got = await self.exchange(beats, self.sink.recv, len(queries), limit)
        if len(got) < len(queries):
            return [f"query {len(got)}: no output beat (hang)"]
        errs = []
        for i, (q, beat) in enumerate(zip(queries, got, strict=True)):
            want = expected_beat(CFG, flat, q)
            if beat["data"] != want["data"] or beat["psum"] != want["psum"]:
                bad = [j for j in range(CFG.pv_mults) if beat["data"][j] != want["data"][j]]
                errs.append(f"query {i} (d={q[2]} renorm={q[3]} kept={len(q[0])}): psum "
                            f"{beat['psum']} vs {want['psum']}, lanes {bad[:6]} differ: "
                            f"{[beat['data'][j] for j in bad[:6]]} vs "
                            f"{[want['data'][j] for j in bad[:6]]}")
        errs += await self.settle(macs=(macs0, sum(len(q[0]) * q[2] for q in queries)))
        if timed:
            model = pv_schedule(CFG, [(q[0], q[2], q[3]) for q in queries])
            t0 = got[0]["t_in"]
            have = [(b["t_in"] - t0, b["t_out"] - t0) for b in got]
            want = [(r["in"], r["out"]) for r in model]
            if have != want:
                k = next(j for j in range(len(want)) if have[j] != want[j])
                errs.append(f"cycles of query {k}: (in, out) {have[k]} != model {want[k]}")
        return errs


def random_flat(rng, kind="uniform"):
    return random_elements(CFG, rng, v_depth(CFG) * CFG.pv_mults, kind)


def edge_queries(rng):
    """Every d: dense, sparse, contiguous, single, empty, zero probabilities; each with and
    without renorm."""
    out = []
    for d in DIMS:
        n = rows_of(d)
        for kind in ("dense", "sparse", "contiguous", "single", "empty", "zero",
                     "softmaxish"):
            for renorm in (False, True):
                out.append(make_query(CFG, rng, d, n, kind, renorm))
    return out


def random_queries(rng, count):
    out = []
    for _ in range(count):
        d = int(rng.choice(DIMS))
        kind = str(rng.choice(["dense", "sparse", "sparse", "contiguous", "single",
                               "softmaxish"]))
        n = int(rng.integers(1, rows_of(d) + 1))
        out.append(make_query(CFG, rng, d, n, kind, bool(rng.integers(0, 2))))
    return out


@cocotb.test()
async def test_edge_cases(dut):
    """Every d and kind of kept list, with and without renorm, back to back, cycles exact."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED)
    flat = random_flat(rng)
    await bench.load_v(flat)
    queries = edge_queries(rng)
    errs = await bench.batch(flat, queries, timed=True)
    report(dut, SEED, errs, f"{len(queries)} edge-case queries")


@cocotb.test()
async def test_extremes(dut):
    """p = 65535 on every row of v = min / max (the accumulator's full width, saturation),
    with and without renorm, at d = 8 and the largest d (all capacity rows)."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED + 1)
    errs = []
    for kind in ("min", "max", "mixed"):
        flat = random_flat(rng, kind)
        await bench.load_v(flat)
        queries = []
        for d in (DIMS[0], DIMS[-1]):
            for renorm in (False, True):
                queries.append(make_query(CFG, rng, d, rows_of(d), "max", renorm))
        errs += [f"{kind}: {e}" for e in await bench.batch(flat, queries, timed=True)]
    report(dut, SEED, errs, "extreme values")


@cocotb.test()
async def test_random(dut):
    """Seeded random batches (d, kind, renorm change per query), cycles exact."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED + 2)
    errs = []
    for r in range(RUNS):
        flat = random_flat(rng, "mixed" if r % 3 == 2 else "uniform")
        await bench.load_v(flat)
        queries = random_queries(rng, int(rng.integers(1, 6)))
        errs += [f"batch {r}: {e}" for e in await bench.batch(flat, queries, timed=True)]
    report(dut, SEED, errs, f"{RUNS} random batches")


@cocotb.test()
async def test_gaps_and_backpressure(dut):
    """Edge cases and random batches under random input gaps and output backpressure."""
    bench = await Bench.start(dut, idle=0.3, stall=0.4, seed=SEED + 3)
    rng = np.random.default_rng(SEED + 3)
    flat = random_flat(rng)
    await bench.load_v(flat)
    errs = await bench.batch(flat, edge_queries(rng)[::3])
    errs += await bench.batch(flat, random_queries(rng, max(3, RUNS)))
    bench.src.idle_prob, bench.sink.stall_prob = 0.0, 0.8
    errs += await bench.batch(flat, random_queries(rng, 4))
    bench.src.idle_prob, bench.sink.stall_prob = 0.7, 0.0
    errs += await bench.batch(flat, random_queries(rng, 4))
    if not (bench.src.idle_cycles and bench.sink.stall_cycles):
        errs.append("no gap or stall happened")
    report(dut, SEED, errs, "batches under gaps and backpressure")
