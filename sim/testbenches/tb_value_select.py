"""The value-pruning selector (`hw/attention/value_select.py`) and its cocotb testbench.

`ValueSelectTop(config)` is the design under test on Verilator and Icarus: the `ValueSelect` with
its ``k`` carried in the input stream, so that a stream driver can change it row by row, and
cycle stamps on its output:

    i   : In(stream.Signature(feed_layout(config)))   the unit's ``i`` beat {data, count, last}
          plus ``k`` (wired to the unit's ``k`` port, which it samples with a row's first beat)
    o   : Out(stream.Signature(top_output_layout(config)))   the unit's ``o`` beat {data, count,
          last} plus ``t_in``, the cycle of the row's first ``i`` transfer, and ``t_out``, the
          cycle in which the beat first appeared on ``o`` (cycles counted from reset)
    busy, error, error_code, threshold : those of `ValueSelect`

The stamps of rows in flight wait in a FIFO of `STAMP_FIFO_DEPTH`; ``i`` is held off while it is
full (never in the timed tests, where one row is in flight at a time).

Testbench (run by `spatten.sim.infra.testbench.run_testbench`; settings: ``config`` (the
`AttentionConfig` fields), ``seed``, ``runs``): driver `StreamSource` on ``i`` (random idle cycles
when asked; every beat but a row's first carries a random ``k``, lanes above ``count`` hold random
junk), monitor `StreamSink` on ``o`` (random backpressure when asked; it checks the stream
rules), transaction-level model `spatten.golden.attention.value_select` (the kept indices; the
expected packet is their (index, prob) pairs S a beat, lanes above ``count`` zero, a row that
keeps nothing one beat with ``count = 0``), in-order checker per row. A row sent alone (input
always valid, ``o`` always ready, nothing else in flight) must take exactly
`spatten.golden.select_cycles.select_cycles` cycles from its first input transfer to its last
output transfer, both counted (a refused row: that of a ``k = 0`` row of as many beats), and
leave ``threshold`` at its k-th largest value and ``error`` low; a bad row must set ``error`` and
its `ErrorCode` once the selector has taken it, keep them until the next row is taken, and
leave the next row unharmed. The bench is the shared one,
`spatten.sim.infra.bench.UnitBench`.
"""

from __future__ import annotations

import dataclasses
import random

import cocotb
import numpy as np
from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from spatten.config import AttentionConfig
from spatten.golden.attention import value_select
from spatten.golden.select_cycles import select_cycles
from spatten.hw.attention.value_select import ValueSelect, pair_layout
from spatten.hw.common.rowstream import row_layout
from spatten.hw.topk.radix import RunError as ErrorCode

from ..infra.bench import UnitBench, report, tb_config

__all__ = ["ValueSelectTop", "feed_layout", "top_output_layout", "Row", "good_row", "bad_rows",
           "random_probs", "expected_packet", "expected_cycles", "TOPLEVEL", "STAMP_FIFO_DEPTH",
           "KINDS"]

TOPLEVEL = "value_select"
STAMP_FIFO_DEPTH = 16
KINDS = ("uniform", "equal", "dominant", "ties", "small")


def feed_layout(cfg: AttentionConfig) -> data.StructLayout:
    fields = dict(row_layout(unsigned(cfg.prob_bits), cfg.softmax_lanes).members)
    fields["k"] = range(cfg.capacity + 1)
    return data.StructLayout(fields)


def top_output_layout(cfg: AttentionConfig) -> data.StructLayout:
    fields = dict(row_layout(pair_layout(cfg), cfg.softmax_lanes).members)
    fields["t_in"] = 32
    fields["t_out"] = 32
    return data.StructLayout(fields)


class ValueSelectTop(wiring.Component):
    """`ValueSelect` with ``k`` in the input stream and cycle stamps on ``o`` (see the module
    docstring)."""

    def __init__(self, config: AttentionConfig):
        self.config = config
        self.vs = ValueSelect(config=config)
        super().__init__({
            "i": In(stream.Signature(feed_layout(config))),
            "o": Out(stream.Signature(top_output_layout(config))),
            "busy": Out(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "threshold": Out(config.prob_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.vs = vs = self.vs
        ip, op = self.i.payload, self.o.payload

        cycle = Signal(32)
        m.d.sync += cycle.eq(cycle + 1)
        m.submodules.stamps = fifo = SyncFIFOBuffered(width=32, depth=STAMP_FIFO_DEPTH)
        in_first = Signal(init=1)
        i_take = self.i.valid & self.i.ready
        with m.If(i_take):
            m.d.sync += in_first.eq(ip.last)
        m.d.comb += [
            vs.i.valid.eq(self.i.valid & fifo.w_rdy),
            self.i.ready.eq(vs.i.ready & fifo.w_rdy),
            vs.i.payload.data.eq(ip.data),
            vs.i.payload.count.eq(ip.count),
            vs.i.payload.last.eq(ip.last),
            vs.k.eq(ip.k),
            fifo.w_en.eq(i_take & in_first),
            fifo.w_data.eq(cycle),
        ]

        o_take = self.o.valid & self.o.ready
        held = Signal()          # the beat on o was there in the previous cycle too
        stamp = Signal(32)
        t_out = Signal(32)
        m.d.comb += t_out.eq(Mux(held, stamp, cycle))
        m.d.sync += [held.eq(self.o.valid & ~self.o.ready), stamp.eq(t_out)]
        m.d.comb += [
            self.o.valid.eq(vs.o.valid),
            vs.o.ready.eq(self.o.ready),
            op.data.eq(vs.o.payload.data),
            op.count.eq(vs.o.payload.count),
            op.last.eq(vs.o.payload.last),
            op.t_in.eq(fifo.r_data),
            op.t_out.eq(t_out),
            fifo.r_en.eq(o_take & vs.o.payload.last),
            self.busy.eq(vs.busy),
            self.error.eq(vs.error),
            self.error_code.eq(vs.error_code),
            self.threshold.eq(vs.threshold),
        ]
        return m


# ---------------------------------------------------------------------------------- stimuli
@dataclasses.dataclass
class Row:
    """One input row: its beats ({data, count, last, k}), and for a good row its probabilities
    and k (`probs` None for a bad row); `code` is the error the selector must report."""

    label: str
    beats: list
    probs: list | None
    k: int
    code: ErrorCode = ErrorCode.NONE


def random_probs(rng: random.Random, n: int, kind: str) -> list[int]:
    """n probabilities (U0.16) of `kind`: uniform 16-bit, all equal, one dominant over small
    ones, many ties (a few distinct values), or small softmax-like values."""
    if kind == "equal":
        return [rng.randrange(1 << 16)] * n
    if kind == "dominant":
        row = [rng.randrange(64) for _ in range(n)]
        row[rng.randrange(n)] = 60000 + rng.randrange(5536)
        return row
    if kind == "ties":
        vals = [rng.randrange(1 << 16) for _ in range(3)] + [0, 65535]
        return [rng.choice(vals) for _ in range(n)]
    if kind == "small":
        return [min(65535, int(rng.expovariate(1.0) * 65536 / n)) for _ in range(n)]
    if kind == "uniform":
        return [rng.randrange(1 << 16) for _ in range(n)]
    raise ValueError(f"unknown kind {kind!r}")


def _beats(cfg: AttentionConfig, chunks, k: int, rng: random.Random | None) -> list[dict]:
    """Beats from (values, count, last) chunks: k on the first, random k on the others, random
    junk in the lanes above count (zeros without `rng`)."""
    S, N = cfg.softmax_lanes, cfg.capacity
    out = []
    for i, (vals, count, last) in enumerate(chunks):
        vals = [int(v) for v in vals][:S]
        pad = [rng.randrange(1 << cfg.prob_bits) if rng else 0 for _ in range(S - len(vals))]
        kk = k if i == 0 else (rng.randrange(N + 1) if rng else 0)
        out.append({"data": vals + pad, "count": count, "last": int(last), "k": kk})
    return out


def _chunks(values, S: int) -> list[tuple]:
    values = list(values)
    return [(values[lo:lo + S], len(values[lo:lo + S]), lo + S >= len(values))
            for lo in range(0, len(values), S)]


def good_row(cfg: AttentionConfig, probs, k: int, rng: random.Random | None = None,
             label: str = "") -> Row:
    probs = [int(p) for p in probs]
    return Row(label or f"n={len(probs)} k={k}", _beats(cfg, _chunks(probs, cfg.softmax_lanes),
                                                        k, rng), probs, k)


def bad_rows(cfg: AttentionConfig, rng: random.Random) -> list[Row]:
    """One row of every refusal: n over capacity (full and partial last beat), n = 0, a count-0
    beat first, in the middle and last of a longer row, a partial beat that is not the last, a
    count above S (when the count field holds it), k = n + 1 and k = capacity > n."""
    S, N = cfg.softmax_lanes, cfg.capacity
    E = ErrorCode

    def vals(n):
        return [rng.randrange(1 << 16) for _ in range(n)]

    def row(label, chunks, code, k=1):
        return Row(label, _beats(cfg, chunks, k, rng), None, k, code)

    out = [
        row("n = capacity + S", _chunks(vals(N + S), S), E.N_OVER_CAPACITY),
        row("n = capacity + 1", _chunks(vals(N + 1), S), E.N_OVER_CAPACITY, k=N),
        row("n = 0", [([], 0, True)], E.N_ZERO),
        row("count 0 first", [([], 0, False)] + _chunks(vals(2 * S + 1), S), E.BAD_BEAT),
        row("count 0 mid-row", [(vals(S), S, False), ([], 0, False)] + _chunks(vals(3), S),
            E.BAD_BEAT),
        row("count 0 last", _chunks(vals(2 * S), S)[:1] + [([], 0, True)], E.BAD_BEAT),
    ]
    v = vals(2 * S + 1)
    if S > 1:
        ch = _chunks(v, S)
        ch[0] = (ch[0][0][:S - 1], S - 1, False)
        out.append(row("partial beat mid-row", ch, E.BAD_BEAT))
    if S + 1 < 1 << (S.bit_length()):
        ch = _chunks(v, S)
        ch[1] = (ch[1][0], S + 1, False)
        out.append(row(f"count {S + 1} > S", ch, E.BAD_BEAT))
    n = min(N - 1, 2 * S + 3)
    out.append(row("k = n + 1", _chunks(vals(n), S), E.K_OVER_N, k=n + 1))
    out.append(row("k = capacity > n", _chunks(vals(n), S), E.K_OVER_N, k=N))
    return out


def expected_packet(cfg: AttentionConfig, row: Row) -> list[dict]:
    """The ``o`` packet {data, count, last} of a row from the golden model."""
    S = cfg.softmax_lanes
    zero = {"index": 0, "prob": 0}
    if row.probs is None or row.k == 0:
        return [{"data": [zero] * S, "count": 0, "last": 1}]
    keep = [int(i) for i in value_select(cfg, np.asarray(row.probs, dtype=np.int64), row.k)]
    out = []
    for lo in range(0, len(keep), S):
        chunk = [{"index": i, "prob": row.probs[i]} for i in keep[lo:lo + S]]
        out.append({"data": chunk + [zero] * (S - len(chunk)), "count": len(chunk),
                    "last": int(lo + S >= len(keep))})
    return out


def expected_cycles(cfg: AttentionConfig, row: Row) -> int:
    """Cycles of a row alone from its first input transfer to its last output transfer, both
    counted (`select_cycles`; a refused row as a k = 0 row of as many beats)."""
    if row.probs is None:
        return select_cycles(cfg, [0] * (len(row.beats) * cfg.softmax_lanes), 0)
    return select_cycles(cfg, row.probs, row.k)


def row_limit(cfg: AttentionConfig, row: Row) -> int:
    """Cycles a row may take before the bench calls it a hang (generous: gaps and stalls)."""
    n = len(row.beats) * cfg.softmax_lanes
    digits = -(-cfg.prob_bits // cfg.topk_digit_bits)
    return 20 * (len(row.beats) + digits * (n // cfg.topk_lanes + 8) + n) + 2000


# ---------------------------------------------------------------------------------- cocotb
CFG, SEED, _SETTINGS = tb_config(runs=6)
RUNS = int(_SETTINGS["runs"])
S, P, N = CFG.softmax_lanes, CFG.topk_lanes, CFG.capacity


def lengths(rng: random.Random) -> list[int]:
    """n = 1, around S and P (not multiples), a random one, capacity - 1 and capacity."""
    return sorted({1, max(1, S - 1), S + 1, max(1, P - 1), P + 1, 2 * P + 3,
                   rng.randrange(1, N + 1), N - 1, N})


def ks(rng: random.Random, n: int) -> list[int]:
    return sorted({1, n, max(1, n // 4), rng.randrange(1, n + 1)})


def random_rows(rng: random.Random, count: int, with_zero_k=True) -> list[Row]:
    out = []
    for r in range(count):
        kind = KINDS[r % len(KINDS)]
        n = rng.choice([rng.randrange(1, N + 1), rng.randrange(1, N + 1), N,
                        rng.randrange(1, 2 * P + 2)])
        k = rng.choice([1, n, max(1, n // 4), rng.randrange(1, n + 1),
                        rng.randrange(1, n + 1)] + ([0] if with_zero_k else []))
        out.append(good_row(CFG, random_probs(rng, n, kind), k, rng,
                            f"random#{r} {kind} n={n} k={k}"))
    return out


class Bench(UnitBench):
    INPUTS = {"i__valid": 0, "o__ready": 0}

    def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
        super().__init__(dut, ("i", feed_layout(CFG)), ("o", top_output_layout(CFG)),
                         idle=idle, stall=stall, seed=seed)
        self.idle, self.stall, self.seed = idle, stall, seed

    async def status(self) -> dict:
        """busy, error, error_code, threshold and o.valid now (settled); returns in the
        next cycle's writable phase."""
        await ReadOnly()
        d = self.dut
        st = {"busy": int(d.busy.value), "error": int(d.error.value),
              "code": ErrorCode(int(d.error_code.value)),
              "threshold": int(d.threshold.value), "o_valid": int(d.o__valid.value)}
        await RisingEdge(d.clk)
        return st

    async def alone(self, row: Row, timed=True) -> list[str]:
        """Send one row with nothing else in flight; check its packet, the status after it
        (and its cycles when `timed`, i.e. without gaps and backpressure)."""
        got = await self.exchange(row.beats, self.sink.recv_packet, 1, row_limit(CFG, row))
        if not got:
            return [f"{row.label}: no output (hang)"]
        packet = got[0]
        errs = check_packet(row, packet)
        await self.src.wait_idle()
        st = await self.status()
        if st["busy"] or st["o_valid"]:
            errs.append(f"{row.label}: busy {st['busy']} / o valid {st['o_valid']} after "
                        "its packet")
        if st["code"] != row.code or st["error"] != int(row.code != ErrorCode.NONE):
            errs.append(f"{row.label}: error {st['error']} code {st['code'].name}, want "
                        f"{row.code.name}")
        if row.probs is not None and row.k:
            want = sorted(row.probs, reverse=True)[row.k - 1]
            if st["threshold"] != want:
                errs.append(f"{row.label}: threshold {st['threshold']} != {want}")
        if timed:
            have = packet[-1]["t_out"] - packet[0]["t_in"] + 1
            want = expected_cycles(CFG, row)
            if have != want:
                errs.append(f"{row.label}: {have} cycles, model {want}")
        await ClockCycles(self.dut.clk, 2)
        return errs

    async def stream(self, rows: list[Row], watch_errors=False) -> list[str]:
        """Send `rows` back to back; check every packet in order, that the unit is idle
        afterwards, and with `watch_errors` the succession of error codes."""
        codes = []
        mon = cocotb.start_soon(self._watch(codes)) if watch_errors else None
        beats = [b for r in rows for b in r.beats]
        limit = max(row_limit(CFG, r) for r in rows) * 2
        got = await self.exchange(beats, self.sink.recv_packet, len(rows), limit)
        errs = []
        for r, packet in zip(rows, got, strict=True):
            errs += check_packet(r, packet)
        if len(got) < len(rows):
            return errs + [f"row {len(got)} ({rows[len(got)].label}): no output (hang)"]
        errs += await self.settle()
        st = await self.status()
        if st["busy"]:
            errs.append("busy after the last packet")
        if mon is not None:
            mon.cancel()
            want = [ErrorCode.NONE]
            for r in rows:
                if r.code != want[-1]:
                    want.append(r.code)
            if codes != want:
                errs.append(f"error codes {[getattr(c, 'name', c) for c in codes]}, want "
                            f"{[c.name for c in want]}")
        return errs

    async def _watch(self, codes):
        """The error codes in the order they appear (runs of one code as one entry)."""
        dut = self.dut
        while True:
            await ReadOnly()
            c = ErrorCode(int(dut.error_code.value))
            if int(dut.error.value) != int(c != ErrorCode.NONE):
                codes.append(f"error {int(dut.error.value)} with {c.name}")
            if not codes or codes[-1] != c:
                codes.append(c)
            await RisingEdge(dut.clk)

    async def reset(self) -> Bench:
        """Stop the streams, pulse reset for 2 cycles (`UnitBench.reset`); a new bench of the
        same settings."""
        await super().reset()
        return Bench(self.dut, idle=self.idle, stall=self.stall, seed=self.seed + 17)


def check_packet(row: Row, packet: list[dict]) -> list[str]:
    want = expected_packet(CFG, row)
    have = [{"data": b["data"], "count": b["count"], "last": b["last"]} for b in packet]
    if have == want:
        t_in = {b["t_in"] for b in packet}
        return [] if len(t_in) == 1 else [f"{row.label}: t_in {t_in} differs within a row"]
    if [(b["count"], b["last"]) for b in have] != [(b["count"], b["last"]) for b in want]:
        return [f"{row.label}: beats (count, last) {[(b['count'], b['last']) for b in have]}"
                f" != golden {[(b['count'], b['last']) for b in want]}"[:400]]
    for j, (a, b) in enumerate(zip(have, want, strict=True)):
        if a != b:
            return [f"{row.label}: beat {j} {a['data']} != golden {b['data']}"]
    return []


@cocotb.test()
async def test_alone_cycles_exact(dut):
    """Every edge length, kind of row and k (0, 1, n/4, random, n), one row at a time:
    packet, status and cycles exact."""
    bench = await Bench.start(dut)
    rng = random.Random(SEED)
    rows = []
    for n in lengths(rng):
        for j, kind in enumerate(KINDS):
            probs = random_probs(rng, n, kind)
            choice = ks(rng, n)
            for k in ([0] if j == 0 else []) + [choice[j % len(choice)]] + \
                    ([n] if j == 1 else []):
                rows.append(good_row(CFG, probs, k, rng, f"{kind} n={n} k={k}"))
    errs = []
    for row in rows:
        errs += await bench.alone(row)
    report(dut, SEED, errs, f"{len(rows)} rows alone, cycles exact")


@cocotb.test()
async def test_random_back_to_back(dut):
    """Seeded random rows back to back, no gaps, o always ready: every packet in order."""
    bench = await Bench.start(dut)
    rng = random.Random(SEED + 1)
    rows = random_rows(rng, 4 * RUNS)
    report(dut, SEED, await bench.stream(rows), f"{len(rows)} random rows back to back")


@cocotb.test()
async def test_gaps_and_backpressure(dut):
    """Random and edge rows under random input gaps and output backpressure, then under
    heavy backpressure alone and heavy gaps alone: nothing lost, duplicated or reordered."""
    bench = await Bench.start(dut, idle=0.3, stall=0.4, seed=SEED + 2)
    rng = random.Random(SEED + 2)
    edge = [good_row(CFG, random_probs(rng, n, KINDS[i % len(KINDS)]),
                     rng.choice(ks(rng, n)), rng, f"edge n={n}")
            for i, n in enumerate(lengths(rng))]
    errs = await bench.stream(random_rows(rng, 3 * RUNS) + edge)
    bench.src.idle_prob, bench.sink.stall_prob = 0.0, 0.8
    errs += await bench.stream(random_rows(rng, max(2, RUNS // 2)))
    bench.src.idle_prob, bench.sink.stall_prob = 0.7, 0.0
    errs += await bench.stream(random_rows(rng, max(2, RUNS // 2)))
    if not (bench.src.idle_cycles and bench.sink.stall_cycles):
        errs.append("no gap or stall happened")
    report(dut, SEED, errs, "rows under gaps and backpressure")


@cocotb.test()
async def test_bad_rows(dut):
    """Every refusal alone (empty packet, error code held until the next row is taken,
    cycles of a k = 0 row), each followed by a good row; then bad and good rows back to back
    under gaps and backpressure with the succession of error codes watched."""
    bench = await Bench.start(dut)
    rng = random.Random(SEED + 3)
    errs = []
    bad = bad_rows(CFG, rng)
    for b in bad:
        errs += await bench.alone(b)
        st = await bench.status()
        if st["code"] != b.code:
            errs.append(f"{b.label}: code {st['code'].name} not held while idle")
        n = rng.randrange(1, N + 1)
        k = rng.randrange(1, n + 1)
        good = good_row(CFG, random_probs(rng, n, rng.choice(KINDS)), k, rng,
                        f"good after {b.label} (n={n} k={k})")
        errs += await bench.alone(good)
    bench.src.idle_prob, bench.sink.stall_prob = 0.3, 0.4
    rows = []
    for b in bad_rows(CFG, rng):
        rows += [b] + random_rows(rng, 1, with_zero_k=False)
    errs += await bench.stream(rows, watch_errors=True)
    report(dut, SEED, errs, f"{len(bad)} kinds of bad row, alone and back to back")


@cocotb.test()
async def test_reset_mid_row(dut):
    """A reset while a row streams in, while one is selected (the next one loaded), and
    while a packet leaves: the unit is idle after it and the next row is exact (cycles
    too)."""
    bench = await Bench.start(dut)
    rng = random.Random(SEED + 4)
    errs = []

    def row(n=N):
        kind = rng.choice(KINDS)
        k = rng.randrange(1, n + 1)
        return good_row(CFG, random_probs(rng, n, kind), k, rng, f"{kind} n={n} k={k}")

    async def after_reset(what):
        nonlocal bench
        bench = await bench.reset()
        st = await bench.status()
        if st["busy"] or st["o_valid"] or st["error"]:
            errs.append(f"reset {what}: not idle after reset ({st})")
        errs.extend(f"reset {what}: {e}" for e in await bench.alone(row()))

    # 1. in the middle of a row's input
    first = row()
    half = max(1, len(first.beats) // 2)
    if half < len(first.beats):
        await bench.src.send(first.beats[:half])
    await ClockCycles(dut.clk, 3)
    await after_reset("mid-input")
    # 2. during the selection, the next row (partly) loaded
    a, b = row(), row(max(1, N // 2))
    bench.src.send_nowait(a.beats + b.beats)
    await ClockCycles(dut.clk, len(a.beats) + 8)
    await after_reset("mid-selection")
    # 3. while a packet leaves
    a, b = row(), row()
    a = good_row(CFG, a.probs, len(a.probs), rng, "keep all")
    bench.src.send_nowait(a.beats + b.beats)
    await bench.sink.recv()
    await after_reset("mid-output")
    report(dut, SEED, errs, "resets mid-input, mid-selection, mid-output")
