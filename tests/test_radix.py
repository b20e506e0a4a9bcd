# amaranth: UnusedElaboratable=no
"""The radix-select core (`hw/topk/radix.py`) in the Amaranth simulator, one component at a time,
against Python models: the intake's checks and counts, the reader (rows, lane flags, gating,
injected rows), the digit histogram, the bin select (whole selections digit by digit), the tie
counter, the threshold compare and the tie breaker; under random input gaps and output
backpressure where they have streams; every latency against its named constant; edge cases (all
keys equal, k = n, k = 1, one lane); bad parameters. Set SPATTEN_SEED to change the seed."""

import os
import random

import pytest
from amaranth import Module, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from spatten.hw.topk.radix import (
    BIN_SELECT_LATENCY,
    COMPARE_LATENCY,
    HISTOGRAM_LATENCY,
    INTAKE_LATENCY,
    READER_LATENCY,
    TIE_BREAK_LATENCY,
    TIE_COUNTER_LATENCY,
    BinSelect,
    DigitHistogram,
    RowReader,
    RunError,
    RunIntake,
    ThresholdCompare,
    TieBreaker,
    TieCounter,
    key_row_layout,
    read_row_layout,
)
from spatten.sim.infra.amaranth_tb import run_streams, to_py

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def popcount_above(digits, flags, j):
    return sum(1 for d, f in zip(digits, flags, strict=True) if f and d > j)


# ------------------------------------------------------------------------------- RunIntake


def intake_model(runs, lanes, beats, capacity):
    """Per beat: (beat place, store) and then (first, n, error) after it, as the contract says."""
    first, pos, n, err = True, 0, 0, RunError.NONE
    out = []
    for count, last in runs:
        beat = 0 if first else pos
        n_now = 0 if first else n
        err_now = RunError.NONE if first else err
        if count == 0:
            beat_err = RunError.N_ZERO if first and last else RunError.BAD_BEAT
        elif count > lanes or (not last and count != lanes):
            beat_err = RunError.BAD_BEAT
        elif beat >= beats:
            beat_err = RunError.N_OVER_CAPACITY
        else:
            beat_err = RunError.NONE
        store = beat_err == RunError.NONE and err_now == RunError.NONE
        pos = min(beat + 1, beats)
        n = n_now if n_now > capacity else n_now + count
        err = err_now if err_now != RunError.NONE else beat_err
        first = bool(last)
        out.append(((beat, store), (first, n, err)))
    return out


def random_runs(rng, lanes, beats):
    runs = []
    for _ in range(14):
        kind = rng.choice(["good", "good", "good", "over", "zero", "bad_count", "partial",
                           "empty", "one"])
        size = {"good": rng.randrange(1, beats + 1), "over": beats + rng.randrange(1, 3),
                "one": 1}.get(kind, rng.randrange(1, beats + 1))
        beat_list = [(lanes, 0)] * (size - 1) + [(rng.randrange(1, lanes + 1), 1)]
        if kind == "zero":
            beat_list[rng.randrange(size)] = (0, int(size == 1))
        elif kind == "bad_count" and lanes > 1:    # (count's port holds lanes + 1 then)
            beat_list[rng.randrange(size)] = (lanes + 1, 0)
            beat_list[-1] = (1, 1)
        elif kind == "partial" and size > 1:
            beat_list[0] = (max(1, lanes - 1) if lanes > 1 else 0, 0)
        elif kind == "empty":
            beat_list = [(0, 1)]
        runs += beat_list
    return runs


@pytest.mark.parametrize("lanes,beats,capacity", [(4, 5, 20), (1, 6, 6), (16, 3, 40)])
def test_intake_checks_and_counts(lanes, beats, capacity):
    seed = SEED + lanes * 3 + beats
    print("seed", seed)
    rng = random.Random(seed)
    runs = random_runs(rng, lanes, beats)
    want = intake_model(runs, lanes, beats, capacity)
    assert any(e != RunError.NONE for _, (_, _, e) in want)
    assert any(e == RunError.NONE and f for _, (f, _, e) in want)
    dut = RunIntake(lanes=lanes, beats=beats, capacity=capacity)

    async def bench(ctx):
        assert ctx.get(dut.first) == 1 and ctx.get(dut.error) == RunError.NONE
        for (count, last), ((beat, store), after) in zip(runs, want, strict=True):
            while rng.random() < 0.3:           # idle cycles change nothing
                before = (ctx.get(dut.first), ctx.get(dut.n), ctx.get(dut.error))
                await ctx.tick()
                assert (ctx.get(dut.first), ctx.get(dut.n), ctx.get(dut.error)) == before
            ctx.set(dut.take, 1)
            ctx.set(dut.count, count)
            ctx.set(dut.last, last)
            assert (ctx.get(dut.beat), ctx.get(dut.store)) == (beat, store), (count, last)
            await ctx.tick()
            ctx.set(dut.take, 0)
            for _ in range(INTAKE_LATENCY - 1):
                await ctx.tick()
            assert (ctx.get(dut.first), ctx.get(dut.n), ctx.get(dut.error)) == after

    simulate(dut, bench)


def test_intake_fail_and_precedence():
    dut = RunIntake(lanes=2, beats=4, capacity=8)

    async def bench(ctx):
        ctx.set(dut.fail, 1)
        ctx.set(dut.fail_code, RunError.K_OVER_N)
        await ctx.tick()
        ctx.set(dut.fail, 0)
        assert ctx.get(dut.error) == RunError.K_OVER_N
        # a run's first beat clears it; a fail in the cycle of a beat loses to the beat
        ctx.set(dut.fail, 1)
        ctx.set(dut.take, 1)
        ctx.set(dut.count, 2)
        ctx.set(dut.last, 1)
        await ctx.tick()
        assert ctx.get(dut.error) == RunError.NONE and ctx.get(dut.n) == 2

    simulate(dut, bench)


def test_intake_samples_params_with_the_first_beat():
    dut = RunIntake(lanes=2, beats=4, capacity=8, params=data.StructLayout({"k": 4, "m": 2}))
    runs = [[(2, 0, 5, 1), (2, 0, 9, 3), (1, 1, 7, 2)], [(2, 1, 3, 0)], [(0, 1, 11, 1)]]

    async def bench(ctx):
        for run in runs:
            for count, last, k, mode in run:
                ctx.set(dut.take, 1)
                ctx.set(dut.count, count)
                ctx.set(dut.last, last)
                ctx.set(dut.params_in, {"k": k, "m": mode})
                await ctx.tick()
                ctx.set(dut.take, 0)
                await ctx.tick()                # (idle: the params hold)
                assert to_py(ctx.get(dut.params)) == {"k": run[0][2], "m": run[0][3]}

    simulate(dut, bench)
    assert not hasattr(RunIntake(lanes=2, beats=4, capacity=8), "params")


class _TopKCodes(enum.Enum, shape=3):
    NONE = 0
    N_ZERO = 1
    N_OVER_CAPACITY = 2
    K_OVER_N = 3
    BAD_BEAT = 4
    BAD_MODE = 5


def test_intake_takes_a_unit_enum():
    dut = RunIntake(lanes=2, beats=1, capacity=2, errors=_TopKCodes)

    async def bench(ctx):
        ctx.set(dut.take, 1)
        ctx.set(dut.count, 2)
        await ctx.tick()                        # a full beat, not last: the run goes on
        ctx.set(dut.last, 1)
        await ctx.tick()                        # a second beat: over capacity
        assert ctx.get(dut.error) == _TopKCodes.N_OVER_CAPACITY

    simulate(dut, bench)


# ------------------------------------------------------------------------------- RowReader


class ReaderBench(wiring.Component):
    """A `RowReader` on a memory of rows (one region)."""

    def __init__(self, rows_data, lanes, width, capacity):
        self.rows_data, self.key = rows_data, unsigned(width)
        rows = len(rows_data)
        self.reader = RowReader(key_shape=self.key, lanes=lanes, rows=rows, capacity=capacity)
        super().__init__({
            "load": In(1), "elems": In(range(capacity + 1)), "start": In(1),
            "may_read": In(1, init=1), "busy": Out(1),
            "inject": In(stream.Signature(key_row_layout(self.key, lanes, rows))),
            "o": Out(stream.Signature(read_row_layout(self.key, lanes, rows))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = r = self.reader
        m.submodules.mem = mem = Memory(shape=data.ArrayLayout(self.key, r.lanes),
                                        depth=r.rows, init=self.rows_data)
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(r.addr), rp.en.eq(r.read_en), r.read_data.eq(rp.data),
                     r.load.eq(self.load), r.elems.eq(self.elems), r.start.eq(self.start),
                     r.may_read.eq(self.may_read), self.busy.eq(r.busy)]
        wiring.connect(m, r.o, wiring.flipped(self.o))
        wiring.connect(m, wiring.flipped(self.inject), r.inject)
        return m


def read_pass(lanes, rows_data, elems, *, stall=0.0, hold=0.0, seed=0):
    """Starts one pass over `elems` keys; returns run_streams' result and the busy flag after."""
    dut = ReaderBench(rows_data, lanes, 8, len(rows_data) * lanes)
    nrows = -(-elems // lanes)
    rng = random.Random(seed)
    after = {}

    async def setup(ctx):
        ctx.set(dut.load, 1)
        ctx.set(dut.elems, elems)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.load, 0)
        ctx.set(dut.start, 0)

    def watch(ctx, cycle):
        ctx.set(dut.may_read, rng.random() >= hold)

    async def finish(ctx):
        after["busy"] = ctx.get(dut.busy)

    res = run_streams(dut, sources={}, sinks={"o": nrows}, stall=stall, rng=rng, setup=setup,
                      watch=watch, quiet=6, finish=finish)
    want = [{"keys": rows_data[r], "lane_ok": sum(1 << j for j in range(lanes)
                                                  if r * lanes + j < elems),
             "row": r, "last": int(r == nrows - 1), "injected": 0} for r in range(nrows)]
    assert res["beats"]["o"] == want
    assert after["busy"] == 0
    return res


@pytest.mark.parametrize("lanes,rows", [(4, 6), (1, 5), (16, 2), (8, 1)])
def test_reader_one_pass(lanes, rows):
    seed = SEED + lanes + rows
    print("seed", seed)
    rng = random.Random(seed)
    rows_data = [[rng.randrange(256) for _ in range(lanes)] for _ in range(rows)]
    for elems in sorted({1, lanes, rows * lanes, rng.randrange(1, rows * lanes + 1)}):
        res = read_pass(lanes, rows_data, elems)
        # the first row on `o` READER_LATENCY cycles after its read (the cycle after start)
        assert res["seen"]["o"] == [READER_LATENCY + r for r in range(-(-elems // lanes))]
        read_pass(lanes, rows_data, elems, stall=0.5, hold=0.4, seed=seed)


def test_reader_reads_again_and_injects():
    """A second `start` reads the rows again (same `elems`, no new `load`); injected rows take
    R1 whatever the reads, one cycle after they are given."""
    rows_data = [[r * 4 + j for j in range(4)] for r in range(3)]
    dut = ReaderBench(rows_data, 4, 8, 12)
    seen = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.load, 1)
        ctx.set(dut.elems, 10)
        await ctx.tick()
        ctx.set(dut.load, 0)
        for _ in range(2):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            while True:
                await ctx.tick()
                if ctx.get(dut.o.valid):
                    seen.append(to_py(ctx.get(dut.o.payload)))
                if not ctx.get(dut.busy):
                    break
        ctx.set(dut.inject.valid, 1)
        ctx.set(dut.inject.payload, {"keys": [9, 8, 7, 6], "lane_ok": 3, "row": 2, "last": 1})
        assert ctx.get(dut.inject.ready) == 1
        await ctx.tick()
        ctx.set(dut.inject.valid, 0)
        assert ctx.get(dut.o.valid) and ctx.get(dut.busy)
        seen.append(to_py(ctx.get(dut.o.payload)))

    simulate(dut, bench)
    one_pass = [{"keys": rows_data[r], "lane_ok": 15 if r < 2 else 3, "row": r,
                 "last": int(r == 2), "injected": 0} for r in range(3)]
    assert seen == one_pass + one_pass + [
        {"keys": [9, 8, 7, 6], "lane_ok": 3, "row": 2, "last": 1, "injected": 1}]


def test_reader_injected_stream_with_gaps():
    rng = random.Random(SEED + 1)
    print("seed", SEED + 1)
    dut = ReaderBench([[0] * 2] * 4, 2, 8, 8)
    rows = [{"keys": [rng.randrange(256) for _ in range(2)], "lane_ok": rng.randrange(4),
             "row": rng.randrange(4), "last": rng.randrange(2)} for _ in range(30)]
    res = run_streams(dut, sources={"inject": rows}, sinks={"o": len(rows)}, gap=0.4, rng=rng,
                      quiet=4)
    assert res["beats"]["o"] == [{**r, "injected": 1} for r in rows]
    assert res["seen"]["o"] == [t + 1 for t in res["accepted"]["inject"]]


# -------------------------------------------------------------------------- DigitHistogram


@pytest.mark.parametrize("lanes,digit_bits,restarts", [(4, 2, True), (1, 3, False),
                                                       (16, 4, False), (16, 4, True),
                                                       (2, 1, True), (8, 6, False)])
def test_histogram_counts(lanes, digit_bits, restarts):
    """Random beats with gaps, loads between groups of beats, restart beats (when built with
    them): ``counts`` equals the contract's model in every cycle, HISTOGRAM_LATENCY after each
    beat."""
    seed = SEED + lanes * 11 + digit_bits
    print("seed", seed)
    rng = random.Random(seed)
    capacity = 4096                             # no count outgrows its shape in 160 cycles
    dut = DigitHistogram(lanes=lanes, digit_bits=digit_bits, capacity=capacity,
                         restarts=restarts)
    bins, top = (1 << digit_bits) - 1, (1 << digit_bits) - 1
    counted = []                                # beats in order: (cycle, digits, flags, restart)

    def model(cycle, loads):
        counts, base = None, None
        events = sorted([(t, 0, init) for t, init in loads]
                        + [(t, 1, b) for t, *b in counted if t + HISTOGRAM_LATENCY <= cycle])
        for _, kind, what in events:
            if kind == 0:
                counts, base = list(what), list(what)
            else:
                digits, flags, restart = what
                start = base if restart else counts
                counts = [start[j] + popcount_above(digits, flags, j) for j in range(bins)]
        return counts

    async def bench(ctx):
        loads = []
        init = [rng.randrange(-capacity, 1)] * bins
        ctx.set(dut.init, init)
        ctx.set(dut.load, 1)
        loads.append((0, init))
        await ctx.tick()
        ctx.set(dut.load, 0)
        for cycle in range(1, 160):
            assert ctx.get(dut.i.ready) == 1
            want = model(cycle, loads)
            if want is not None:
                assert [int(x) for x in ctx.get(dut.counts)] == want, cycle
            kind = rng.random()
            if kind < 0.05 and not any(t >= cycle - HISTOGRAM_LATENCY for t, *_ in counted):
                init = [rng.randrange(-capacity, 1) for _ in range(bins)]
                ctx.set(dut.init, init)
                ctx.set(dut.load, 1)
                loads.append((cycle, init))
                ctx.set(dut.i.valid, 0)
            elif kind < 0.6:
                digits = rng.choice([[rng.randrange(top + 1) for _ in range(lanes)],
                                     [top] * lanes, [0] * lanes])
                flags = rng.choice([[rng.randrange(2) for _ in range(lanes)], [1] * lanes])
                restart = int(restarts and rng.random() < 0.1)
                payload = {"digits": digits, "flags": sum(f << j for j, f in enumerate(flags))}
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {**payload, "restart": restart} if restarts else payload)
                counted.append((cycle, digits, flags, restart))
            else:
                ctx.set(dut.i.valid, 0)
            await ctx.tick()
            ctx.set(dut.load, 0)
            assert ctx.get(dut.busy) == int(bool(counted) and counted[-1][0] == cycle)

    simulate(dut, bench)
    assert len(counted) > 50


# ------------------------------------------------------------------------------- BinSelect


def digits_of(key, digit_bits, digits):
    return [(key >> (digit_bits * h)) & ((1 << digit_bits) - 1) for h in reversed(range(digits))]


def bin_select_run(digit_bits, digits, keys, k):
    """A whole radix selection: per digit the histogram of the candidates (in software), then
    BinSelect's pick and commit; returns (chosen key, ties to keep, in_bin per digit, seen
    valid cycles relative to go)."""
    n = len(keys)
    dut = BinSelect(digit_bits=digit_bits, capacity=max(n, 2), digits=digits)
    bins = (1 << digit_bits) - 1
    out = {}

    async def bench(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.n, n)
        ctx.set(dut.k, k)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cand, k_rem, key, in_bins, lat = list(keys), k, 0, [], []
        for h in range(digits):
            ds = [digits_of(x, digit_bits, digits)[h] for x in cand]
            ctx.set(dut.above, [sum(d > j for d in ds) - k_rem for j in range(bins)])
            ctx.set(dut.go, 1)
            ctx.set(dut.digit, digits - 1 - h)
            await ctx.tick()
            ctx.set(dut.go, 0)
            for t in range(1, 4):               # valid exactly BIN_SELECT_LATENCY after go
                if ctx.get(dut.valid):
                    lat.append(t)
                    b = ctx.get(dut.bin)
                    assert ctx.get(dut.in_bin) == sum(d == b for d in ds)
                    assert ctx.get(dut.to_find) == k_rem - sum(d > b for d in ds)
                    assert ctx.get(dut.base) == -ctx.get(dut.to_find)
                    assert ctx.get(dut.bin_digit) == digits - 1 - h
                    in_bins.append(ctx.get(dut.in_bin))
                    key = key << digit_bits | b
                    k_rem = ctx.get(dut.to_find)
                    cand = [x for x, d in zip(cand, ds, strict=True) if d == b]
                await ctx.tick()
        out.update(key=key, ties=k_rem, in_bins=in_bins, latency=lat)

    simulate(dut, bench)
    return out


@pytest.mark.parametrize("digit_bits,digits", [(2, 3), (4, 2), (1, 5), (3, 3)])
def test_bin_select_finds_the_kth_largest(digit_bits, digits):
    seed = SEED + digit_bits * 5 + digits
    print("seed", seed)
    rng = random.Random(seed)
    top = 1 << (digit_bits * digits)
    cases = [([7 % top] * 9, 4), ([5 % top] * 6, 6), ([rng.randrange(top)], 1)]  # equal, k = n
    for _ in range(12):
        n = rng.randrange(1, 40)
        keys = [rng.randrange(min(top, rng.choice([4, top]))) for _ in range(n)]
        cases.append((keys, rng.choice([1, n, rng.randrange(1, n + 1)])))
    for keys, k in cases:
        res = bin_select_run(digit_bits, digits, keys, k)
        ordered = sorted(keys, reverse=True)
        assert res["key"] == ordered[k - 1], (keys, k)
        assert res["ties"] == k - sum(x > ordered[k - 1] for x in keys)
        assert res["in_bins"][-1] == keys.count(ordered[k - 1])
        assert res["latency"] == [BIN_SELECT_LATENCY] * digits


# ------------------------------------------------------------------------------ TieCounter


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_tie_counter(lanes):
    seed = SEED + lanes
    print("seed", seed)
    rng = random.Random(seed)
    dut = TieCounter(lanes=lanes, capacity=100)

    async def bench(ctx):
        left = 0
        for _ in range(300):
            op = rng.random()
            ctx.set(dut.set, 0)
            ctx.set(dut.take, 0)
            if op < 0.1:
                left = rng.choice([0, 1, lanes, rng.randrange(101)])
                ctx.set(dut.set, 1)
                ctx.set(dut.ties, left)
                ctx.set(dut.take, int(rng.random() < 0.5))    # set wins
            elif op < 0.7:
                count = rng.randrange(lanes + 1)
                ctx.set(dut.take, 1)
                ctx.set(dut.row_ties, count)
                left = 0 if count > left else left - count
            for _ in range(TIE_COUNTER_LATENCY):
                await ctx.tick()
            ctx.set(dut.set, 0)
            ctx.set(dut.take, 0)
            assert ctx.get(dut.cap) == min(left, lanes)

    simulate(dut, bench)


# ------------------------------------------------------------------------ ThresholdCompare


def random_rows(rng, lanes, rows, n, width, spread):
    return [{"keys": [rng.randrange(spread) for _ in range(lanes)],
             "lane_ok": rng.choice([(1 << lanes) - 1, rng.randrange(1 << lanes)]),
             "row": rng.randrange(rows), "last": rng.randrange(2),
             "match": rng.randrange(1 << lanes)} for _ in range(n)]


@pytest.mark.parametrize("lanes,keep_all", [(4, 0), (1, 0), (16, 0), (8, 1)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_threshold_compare(lanes, keep_all, gap, stall):
    seed = SEED + lanes + keep_all * 7 + int(gap * 10) + int(stall * 100)
    print("seed", seed)
    rng = random.Random(seed)
    dut = ThresholdCompare(key_shape=unsigned(6), lanes=lanes, rows=5)
    rows = random_rows(rng, lanes, 5, 40, 6, rng.choice([4, 64]))
    thr = rng.randrange(4)

    async def setup(ctx):
        ctx.set(dut.threshold, thr)
        ctx.set(dut.keep_all, keep_all)

    res = run_streams(dut, sources={"i": rows}, sinks={"o": len(rows)}, gap=gap, stall=stall,
                      rng=rng, setup=setup, quiet=4)
    want = []
    for r in rows:
        ok = [r["lane_ok"] >> j & 1 for j in range(lanes)]
        gt = [o and (keep_all or x > thr) for o, x in zip(ok, r["keys"], strict=True)]
        eq = [o and not keep_all and x == thr for o, x in zip(ok, r["keys"], strict=True)]
        want.append({"keys": r["keys"], "row": r["row"], "last": r["last"], "match": r["match"],
                     "greater": sum(int(f) << j for j, f in enumerate(gt)),
                     "equal": sum(int(f) << j for j, f in enumerate(eq))})
    assert res["beats"]["o"] == want
    if gap == stall == 0:
        assert res["seen"]["o"] == [t + COMPARE_LATENCY for t in res["accepted"]["i"]]


# ------------------------------------------------------------------------------ TieBreaker


@pytest.mark.parametrize("lanes,case", [(4, "random"), (1, "random"), (16, "random"),
                                        (4, "all_equal_k_n"), (8, "one_tie"), (4, "no_tie")])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.3), (0.0, 0.6)])
def test_tie_breaker(lanes, case, gap, stall):
    seed = SEED + lanes * 3 + len(case) + int(gap * 10) + int(stall * 100)
    print("seed", seed)
    rng = random.Random(seed)
    rows_n, full = 12, (1 << lanes) - 1
    if case == "all_equal_k_n":         # every key equal to the threshold, all of them kept
        flags = [(0, full)] * rows_n
    else:
        flags = [(g, rng.randrange(1 << lanes) & ~g)
                 for g in (rng.randrange(1 << lanes) for _ in range(rows_n))]
    total_eq = sum(bin(e).count("1") for _, e in flags)
    ties = {"all_equal_k_n": total_eq, "one_tie": 1, "no_tie": 0}.get(
        case, rng.randrange(total_eq + 2))
    rows = [{"keys": [rng.randrange(64) for _ in range(lanes)], "row": r % 7,
             "last": int(r == rows_n - 1), "match": 0, "greater": g, "equal": e}
            for r, (g, e) in enumerate(flags)]
    dut = TieBreaker(key_shape=unsigned(6), lanes=lanes, rows=7, capacity=64)

    async def setup(ctx):
        ctx.set(dut.ties_set, 1)
        ctx.set(dut.ties, ties)
        await ctx.tick()
        ctx.set(dut.ties_set, 0)

    res = run_streams(dut, sources={"i": rows}, sinks={"o": len(rows)}, gap=gap, stall=stall,
                      rng=rng, setup=setup, quiet=4)
    want, left = [], ties
    for r in rows:
        keep = r["greater"]
        for j in range(lanes):
            if r["equal"] >> j & 1 and left > 0:
                keep |= 1 << j
                left -= 1
        want.append({"keys": r["keys"], "keep": keep, "row": r["row"], "last": r["last"]})
    assert res["beats"]["o"] == want
    if gap == stall == 0:
        assert res["seen"]["o"] == [t + TIE_BREAK_LATENCY for t in res["accepted"]["i"]]


# -------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize("make,exc,msg", [
    (lambda: RunIntake(lanes=0, beats=4, capacity=8), ValueError, "lanes must be from 1 to 32"),
    (lambda: RunIntake(lanes=33, beats=4, capacity=8), ValueError, "not 33"),
    (lambda: RunIntake(lanes=4, beats=0, capacity=8), ValueError, "beats must be at least 1"),
    (lambda: RunIntake(lanes=4, beats=2, capacity="8"), TypeError, "capacity must be an int"),
    (lambda: RunIntake(lanes=4, beats=2, capacity=8, errors=int), TypeError, "errors must be"),
    (lambda: RunIntake(lanes=4, beats=2, capacity=8, errors=BadCodes), TypeError, "N_ZERO"),
    (lambda: RunIntake(lanes=4, beats=2, capacity=8, params="k"), TypeError, "params"),
    (lambda: RowReader(key_shape="x", lanes=4, rows=2, capacity=8), TypeError, "shape-castable"),
    (lambda: RowReader(key_shape=unsigned(4), lanes=3, rows=2, capacity=8), ValueError,
     "power of two"),
    (lambda: RowReader(key_shape=unsigned(4), lanes=4, rows=0, capacity=8), ValueError,
     "rows must be at least 1"),
    (lambda: DigitHistogram(lanes=4, digit_bits=7, capacity=8), ValueError, "digit_bits"),
    (lambda: DigitHistogram(lanes=4, digit_bits=True, capacity=8), TypeError, "digit_bits"),
    (lambda: DigitHistogram(lanes=4, digit_bits=2, capacity=8, restarts=1), TypeError,
     "restarts must be a bool"),
    (lambda: BinSelect(digit_bits=0, capacity=8, digits=2), ValueError,
     "digit_bits must be from 1 to 6"),
    (lambda: BinSelect(digit_bits=2, capacity=0, digits=2), ValueError,
     "capacity must be at least 1"),
    (lambda: BinSelect(digit_bits=2, capacity=4, digits=0), ValueError,
     "digits must be at least 1"),
    (lambda: TieCounter(lanes=4, capacity=1.5), TypeError, "capacity must be an int"),
    (lambda: ThresholdCompare(key_shape=unsigned(4), lanes=40, rows=2), ValueError, "lanes"),
    (lambda: TieBreaker(key_shape=unsigned(4), lanes=6, rows=2, capacity=4), ValueError,
     "power of two"),
])
def test_bad_parameters(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


class BadCodes(enum.Enum, shape=3):
    NONE = 0
    N_ZERO = 2
    N_OVER_CAPACITY = 1
    BAD_BEAT = 4
