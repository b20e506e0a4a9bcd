"""The streaming softmax (`hw/attention/softmax.py`) and its cocotb testbench.

`SoftmaxTop(config)` is the design under test on Verilator: the `Softmax` with its run-time
registers carried in the input stream, so that a stream driver can change them row by row:

    i   : In(stream.Signature(feed_layout(config)))   {beat: dots_layout, shift, scale,
          post_shift}; the Softmax samples the registers with each row's first beat
    o   : Out(stream.Signature(probs_layout(config)))
    row : Out(stream.Signature(row_info_layout(config)))

`softmax_selftest(config, seed=...)` builds it and runs the self-checking tests below through
`spatten.sim.infra.testbench.run_testbench` (settings: ``config`` (the `AttentionConfig` fields),
``seed``, ``random_rows``).

Testbench: driver `StreamSource` on ``i`` (random idle cycles when asked; the registers of every
beat but a row's first are random junk), monitors `StreamSink` on ``o`` and ``row`` (random
backpressure when asked; they check the stream rules), transaction-level model
`spatten.golden.attention.softmax`, in-order checker per row (probabilities, beat structure, the
row beat; an error row must give ``error`` and one empty beat). Without gaps and backpressure
the cycle of every row's first input beat and last output beat must equal
`spatten.golden.softmax_cycles.softmax_cycle_model` exactly (`cycle_errors`, which the
Amaranth-simulator tests use too). The bench is the shared one,
`spatten.sim.infra.bench.UnitBench`.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from amaranth.hdl import Module, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig
from spatten.golden.attention import softmax as golden_softmax
from spatten.golden.softmax_cycles import softmax_cycle_model
from spatten.hw.attention.softmax import Softmax, dots_layout, probs_layout, row_info_layout

from ..infra.bench import UnitBench, cycle_now, report, tb_config
from ..infra.runner import CocotbResult
from ..infra.testbench import run_testbench
from .unit_top import lane_beats

__all__ = ["SoftmaxTop", "feed_layout", "softmax_selftest", "beats_of", "make_rows",
           "cycle_errors", "TOPLEVEL"]

TOPLEVEL = "softmax"


def feed_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "beat": dots_layout(cfg),
        "shift": range(cfg.dot_width + 1),
        "scale": unsigned(cfg.scale_bits),
        "post_shift": range(cfg.post_shift_max + 1),
    })


class SoftmaxTop(wiring.Component):
    """`Softmax` with its registers in the input stream (see the module docstring)."""

    def __init__(self, config: AttentionConfig):
        self.cfg = config
        super().__init__({
            "i": In(stream.Signature(feed_layout(config))),
            "o": Out(stream.Signature(probs_layout(config))),
            "row": Out(stream.Signature(row_info_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.softmax = sm = Softmax(config=self.cfg)
        m.d.comb += [
            sm.i.payload.eq(self.i.payload.beat), sm.i.valid.eq(self.i.valid),
            self.i.ready.eq(sm.i.ready),
            sm.shift.eq(self.i.payload.shift), sm.scale.eq(self.i.payload.scale),
            sm.post_shift.eq(self.i.payload.post_shift),
        ]
        wiring.connect(m, wiring.flipped(self.o), sm.o)
        wiring.connect(m, wiring.flipped(self.row), sm.row)
        return m


def softmax_selftest(cfg: AttentionConfig, *, seed: int, random_rows: int = 12,
                     sim: str = "verilator", testcase=None) -> CocotbResult:
    """Build `SoftmaxTop` and run this module's self-checking tests; raises `CocotbFailure` when
    one fails."""
    return run_testbench(lambda: SoftmaxTop(cfg), name=TOPLEVEL, tb_module=__name__, config=cfg,
                         settings={"seed": seed, "random_rows": random_rows}, sim=sim,
                         testcase=testcase)


def cycle_errors(cfg: AttentionConfig, model_rows, first_in, last_out) -> list[str]:
    """Compare each row's (first input, last output) transfer cycles, relative to the first
    row's first input, with `softmax_cycle_model(cfg, model_rows)`; return the problems found
    (the first differing row)."""
    t0 = first_in[0]
    got = [(f - t0, z - t0) for f, z in zip(first_in, last_out, strict=True)]
    want = [(ev.first_in, ev.last_out) for ev in softmax_cycle_model(cfg, model_rows)]
    if got == want:
        return []
    bad = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if bad is None:
        return [f"cycles of {len(got)} rows for {len(want)} in the model"]
    return [f"cycles of row {bad}: (first in, last out) {got[bad]} != model {want[bad]}"]


# ---------------------------------------------------------------------------------- stimuli
def beats_of(cfg: AttentionConfig, dots) -> list[dict]:
    """The input beats of a row of dots."""
    return lane_beats(dots, cfg.softmax_lanes)


def _quantize(x, bits):
    top = (1 << (bits - 1)) - 1
    m = float(np.max(np.abs(x))) or 1.0
    return np.round(x / m * top).astype(np.int64), m / top


def make_rows(cfg: AttentionConfig, rng: np.random.Generator, kind: str, count: int = 0):
    """(label, beats, params, dots or None for an error row) for the edge cases ("edge"),
    random rows ("random"), realistic rows ("real") or error rows ("error")."""
    from spatten.golden.attention import ScoreParams, score_params

    S, cap, DW, SB = cfg.softmax_lanes, cfg.capacity, cfg.dot_width, cfg.scale_bits
    lo, hi = -(1 << (DW - 1)), (1 << (DW - 1)) - 1
    typ = score_params(cfg, 0.02, 0.02, cfg.head_dims[-1])
    out = []

    def good(label, dots, p):
        dots = np.asarray(dots, dtype=np.int64)
        out.append((label, beats_of(cfg, dots), p, dots))

    if kind == "edge":
        for n in sorted({1, max(1, S - 1), S, S + 1, 2 * S + 3, cap - 1, cap}):
            good(f"n={n}", rng.integers(-3000, 3000, n), typ)
        n = min(cap, 3 * S + 1)
        good("all equal", [9] * n, typ)
        good("all min", [lo] * n, typ)
        good("one dominant", np.r_[[0] * (n - 1), [hi]], typ)
        good("full range", rng.integers(lo, hi + 1, cap), typ)
        good("shift max", rng.integers(lo, hi + 1, n), ScoreParams(DW, (1 << SB) - 1, 0))
        good("post_shift 0", rng.integers(-999, 999, n), ScoreParams(0, (1 << SB) - 1, 0))
        good("post_shift 31", rng.integers(-999, 999, n), ScoreParams(0, (1 << SB) - 1, 31))
        good("scale 0", rng.integers(lo, hi + 1, n), ScoreParams(3, 0, 7))
    elif kind == "random":
        for r in range(count):
            n = int(rng.integers(1, cap + 1))
            w = int(rng.integers(4, DW))
            p = typ if r % 3 == 0 else ScoreParams(int(rng.integers(0, DW + 1)),
                                                   int(rng.integers(0, 1 << SB)),
                                                   int(rng.integers(0, 32)))
            good(f"random#{r} n={n}", np.clip(rng.integers(-(1 << w), 1 << w, n), lo, hi), p)
    elif kind == "real":
        for r in range(count):
            d = cfg.head_dims[r % len(cfg.head_dims)]
            n = int(rng.integers(1, cap + 1))
            q, qs = _quantize(rng.normal(0, 1 + r % 3, d), cfg.data_width)
            k, ks = _quantize(rng.normal(0, 1, (n, d)), cfg.data_width)
            good(f"real#{r} d={d} n={n}", k @ q, score_params(cfg, qs, ks, d))
    elif kind == "error":
        z = [0] * S
        v = rng.integers(-99, 99, 2 * S + 1)
        out.append(("over capacity", beats_of(cfg, rng.integers(-99, 99, cap + S)), typ, None))
        out.append(("n = 0", [{"data": z, "count": 0, "last": 1}], typ, None))
        out.append(("empty beat mid-row",
                    [{"data": z, "count": 0, "last": 0}] + beats_of(cfg, v), typ, None))
        if S > 1:
            pm = beats_of(cfg, v)
            pm[0] = dict(pm[0], count=S - 1)
            out.append(("partial beat mid-row", pm, typ, None))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return out


# ---------------------------------------------------------------------------------- cocotb
CFG, SEED, _SETTINGS = tb_config(random_rows=12)
RANDOM_ROWS = int(_SETTINGS["random_rows"])


class Bench(UnitBench):
    INPUTS = {"i__valid": 0, "o__ready": 0, "row__ready": 0}

    def __init__(self, dut, idle=0.0, stall=0.0, row_stall=0.0, seed=SEED):
        self.rng = random.Random(seed)
        self.o_cycles: list[int] = []
        super().__init__(dut, ("i", feed_layout(CFG)), ("o", probs_layout(CFG)), idle=idle,
                         stall=stall, seed=seed, on_sink=self._o_beat)
        self.rows = self.add_sink("row", row_info_layout(CFG), stall=row_stall,
                                  rng=random.Random(seed + 3))

    def _o_beat(self, beat):
        if beat["last"]:
            self.o_cycles.append(cycle_now())

    def feed(self, rows) -> list[dict]:
        DW, SB = CFG.dot_width, CFG.scale_bits
        out = []
        for _, beats, p, _ in rows:
            for i, b in enumerate(beats):
                if i == 0:
                    regs = (p.shift, p.scale, p.post_shift)
                else:
                    regs = (self.rng.randrange(DW + 1), self.rng.randrange(1 << SB),
                            self.rng.randrange(32))
                out.append({"beat": b, "shift": regs[0], "scale": regs[1],
                            "post_shift": regs[2]})
        return out

    async def run(self, rows, timed=False) -> list[str]:
        """Send `rows` back to back, check every row in order (and the cycles when
        `timed`); return the problems found."""
        log = self.log_transfers("i") if timed else None
        self.o_cycles = []
        limit = 60 * sum(len(r[1]) + 1 for r in rows) + 400 * len(rows) + 2000
        got = await self.exchange(self.feed(rows), self._row, len(rows), limit)
        errs = []
        for ri, (row, (packet, info)) in enumerate(zip(rows, got, strict=True)):
            label, beats, p, dots = row
            errs += [f"row {ri} ({label}): {e}" for e in _check(beats, p, dots, packet,
                                                                   info)]
        if len(got) < len(rows):
            return errs + [f"row {len(got)} ({rows[len(got)][0]}): no output (hang)"]
        errs += await self.settle()
        if timed:
            firsts, k = [], 0
            for _, beats, _, _ in rows:
                firsts.append(log["i"][k])
                k += len(beats)
            model_rows = [("error", len(b)) if d is None else int(d.size)
                          for _, b, _, d in rows]
            errs += cycle_errors(CFG, model_rows, firsts, self.o_cycles)
        return errs

    async def _row(self):
        packet = await self.sink.recv_packet()
        info = await self.rows.recv()
        return packet, info


def _check(beats, p, dots, packet, info) -> list[str]:
    S = CFG.softmax_lanes
    if dots is None:
        errs = []
        if info["error"] != 1 or any(info[k] for k in ("p_max", "esum", "n", "max")):
            errs.append(f"row beat {info}, want error=1 and zeros")
        if len(packet) != 1 or packet[0]["count"] != 0 or packet[0]["last"] != 1:
            errs.append(f"o packet of {len(packet)} beats, want one empty beat")
        return errs
    g = golden_softmax(CFG, dots, p)
    want = {"p_max": int(g.p_max), "esum": int(g.esum), "n": int(dots.size),
            "max": int(g.max), "error": 0}
    errs = [] if info == want else [f"row beat {info} != golden {want}"]
    if [(b["count"], b["last"]) for b in packet] != [(b["count"], b["last"]) for b in beats]:
        return errs + [f"beat structure {[(b['count'], b['last']) for b in packet]}"]
    got = [x for b in packet for x in b["data"][:b["count"]]]
    if got != g.p.tolist():
        bad = next(i for i, (a, b) in enumerate(zip(got, g.p.tolist(), strict=False)) if a != b)
        errs.append(f"p[{bad}] = {got[bad]} != golden {int(g.p[bad])}")
    if any(x for b in packet for x in b["data"][b["count"]:S]):
        errs.append("lanes above count are not 0")
    return errs


@cocotb.test()
async def test_edge_and_errors(dut):
    """Edge rows and error rows (each followed by a good row), back to back, cycles exact."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED)
    rows = make_rows(CFG, rng, "edge")
    for bad in make_rows(CFG, rng, "error"):
        rows += [bad] + make_rows(CFG, rng, "random", 1)
    report(dut, SEED, await bench.run(rows, timed=True), f"{len(rows)} edge and error rows")


@cocotb.test()
async def test_random_and_real(dut):
    """Seeded random rows and realistic rows (quantized Gaussian q, k), cycles exact."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED + 1)
    rows = make_rows(CFG, rng, "random", RANDOM_ROWS) + make_rows(CFG, rng, "real",
                                                                  RANDOM_ROWS)
    report(dut, SEED, await bench.run(rows, timed=True), f"{len(rows)} random and real rows")


@cocotb.test()
async def test_gaps_and_backpressure(dut):
    """Random, edge and error rows under input gaps, o backpressure and a slow row
    consumer: nothing lost, duplicated or reordered."""
    bench = await Bench.start(dut, idle=0.3, stall=0.4, row_stall=0.6, seed=SEED + 2)
    rng = np.random.default_rng(SEED + 2)
    rows = make_rows(CFG, rng, "random", RANDOM_ROWS) + make_rows(CFG, rng, "edge")[::2]
    rows += make_rows(CFG, rng, "error") + make_rows(CFG, rng, "random", 2)
    errs = await bench.run(rows)
    if not (bench.src.idle_cycles and bench.sink.stall_cycles and bench.rows.stall_cycles):
        errs.append("no gap or stall happened")
    report(dut, SEED, errs, f"{len(rows)} rows under gaps and backpressure")
