"""The fetch unit's plane readers and DRAM arbiter (hw/memory/fetch.py) against the DRAM image
golden model, in the Amaranth simulator with the DRAM model of sim/dram.py: buffer contents,
requests and bytes exactly as `golden.dram_image` predicts, under DRAM latency, bandwidth limits,
random stalls, command gaps and write backpressure; bad input gives an error, not a hang."""

import os
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spatten.config import MemoryConfig
from spatten.golden.dram_image import (
    ImageLayout,
    PlaneLayout,
    buffer_runs,
    build_image,
    coalesce,
    read_image,
)
from spatten.hw.memory.fetch import ISSUE_LATENCY, BurstIssuer, DramArbiter, PlaneReader
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.models.dram import DramModel

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
KINDS = ("k_msb", "k_lsb", "v")


class Harness(wiring.Component):
    """DRAM model + arbiter + one reader per plane kind; the readers' ports are the harness's."""

    def __init__(self, layout: ImageLayout, image: bytes, mem: MemoryConfig, elems: int,
                 capacity: int):
        self.readers = {}
        bits = {"k_msb": (layout.msb_bits, True), "k_lsb": (layout.lsb_bits, False),
                "v": (layout.width, True)}
        for kind in KINDS:
            b, sg = bits[kind]
            self.readers[kind] = PlaneReader(bits=b, is_signed=sg, elems=elems,
                                             depth=capacity, memory=mem,
                                             capacity=capacity)
        self.arb = DramArbiter(ports=len(KINDS), memory=mem)
        self.dram = DramModel(beat_bytes=mem.beat_bytes, depth_beats=len(image) // mem.beat_bytes,
                              max_burst=mem.max_burst, max_outstanding=mem.max_outstanding,
                              addr_width=mem.addr_width, init=image)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dram = self.dram
        m.submodules.arb = self.arb
        for i, kind in enumerate(KINDS):
            r = self.readers[kind]
            m.submodules[kind] = r
            wiring.connect(m, r.req, self.arb.req(i))
            wiring.connect(m, self.arb.resp(i), r.resp)
        wiring.connect(m, self.arb.dram_req, self.dram.req)
        wiring.connect(m, self.dram.resp, self.arb.dram_resp)
        return m


def _simulate(layout, image, mem, elems, capacity, jobs, d, *, latency=1, bpc=16, stall=0,
              gap=0.0, backpressure=0.0, seed=0, base_override=None, max_cycles=20000):
    """jobs: {kind: list of run dicts}. Returns ({kind: buffer array (words, elems)}, info)."""
    h = Harness(layout, image, mem, elems, capacity)
    rng = random.Random(seed)
    planes = {k: layout.plane(k, 0, 0) for k in KINDS}
    words = capacity
    bufs = {k: np.zeros((words, elems), dtype=np.int64) for k in KINDS}
    writes = {k: 0 for k in KINDS}
    info = {}

    async def tb(ctx):
        ctx.set(h.dram.latency, latency)
        ctx.set(h.dram.bytes_per_cycle, bpc)
        ctx.set(h.dram.stall, stall)
        for kind in KINDS:
            r = h.readers[kind]
            base = planes[kind].base if base_override is None else base_override
            ctx.set(r.base, base)
            ctx.set(r.d_log2, d.bit_length() - 1)
        pending = {k: list(jobs.get(k, [])) for k in KINDS}
        presenting = {k: False for k in KINDS}
        idle = 0
        for cycle in range(max_cycles):  # noqa: B007 (read after the loop: its last cycle)
            for kind in KINDS:
                r = h.readers[kind]
                if not presenting[kind] and pending[kind] and rng.random() >= gap:
                    ctx.set(r.cmd.payload, r.cmd.payload.shape().const(pending[kind][0]))
                    presenting[kind] = True
                ctx.set(r.cmd.valid, presenting[kind])
                ctx.set(r.wr.ready, rng.random() >= backpressure)
            busy = False
            for kind in KINDS:          # transfers of this cycle (inputs set, before the edge)
                r = h.readers[kind]
                if ctx.get(r.cmd.valid) and ctx.get(r.cmd.ready):
                    pending[kind].pop(0)
                    presenting[kind] = False
                if ctx.get(r.wr.valid) and ctx.get(r.wr.ready):
                    w = ctx.get(r.wr.payload)
                    writes[kind] += 1
                    en = int(w.en)
                    for g in range(elems // 8):
                        if en >> g & 1:
                            for i in range(8):
                                bufs[kind][int(w.addr), 8 * g + i] = int(w.data[8 * g + i])
                busy |= bool(pending[kind]) or presenting[kind] or bool(ctx.get(r.busy))
            await ctx.tick()
            busy |= bool(ctx.get(h.dram.busy))
            idle = 0 if busy else idle + 1
            if idle > 4:
                break
        else:
            raise AssertionError(f"no end after {max_cycles} cycles")
        info["cycles"] = cycle
        info["bytes"] = int(ctx.get(h.dram.bytes_served))
        info["requests"] = int(ctx.get(h.dram.requests))
        info["errors"] = {k: int(ctx.get(h.readers[k].error)) for k in KINDS}
        info["dram_error"] = int(ctx.get(h.dram.error))
        info["writes"] = writes

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return bufs, info


def _check(layout, image, mem, elems, capacity, d, lists, **kw):
    contents = read_image(layout, image)
    planes = {"k_msb": contents.k_msb[0, 0], "k_lsb": contents.k_lsb[0, 0], "v": contents.v[0, 0]}
    jobs = {k: buffer_runs(lists[k]) for k in KINDS}
    bufs, info = _simulate(layout, image, mem, elems, capacity, jobs, d, **kw)
    assert info["errors"] == {k: 0 for k in KINDS} and info["dram_error"] == 0, info
    want_bytes, want_reqs = 0, 0
    for kind in KINDS:
        idx = lists[kind]
        flat = bufs[kind].reshape(-1)
        got = flat[:len(idx) * d].reshape(len(idx), d) if idx else np.zeros((0, d))
        want = planes[kind][idx, :d] if idx else np.zeros((0, d))
        assert np.array_equal(got, want), f"{kind}: buffer differs"
        assert not flat[len(idx) * d:].any(), f"{kind}: wrote beyond its rows"
        plane = layout.plane(kind, 0, 0)
        for s, c in coalesce(idx):
            rf = plane.run_requests(s, c, mem.beat_bytes, mem.max_burst)
            want_bytes += rf.beats * mem.beat_bytes
            want_reqs += len(rf.requests)
    assert info["bytes"] == want_bytes and info["requests"] == want_reqs, info
    return info


def _layout_image(d, msb_bits, n, seed):
    rng = np.random.default_rng(seed)
    layout = ImageLayout(layers=1, kv_heads=1, q_heads=1, n_max=n, m_max=1, d=d,
                         msb_bits=msb_bits, align=256)
    k = rng.integers(-2048, 2048, size=(1, 1, n, d))
    v = rng.integers(-2048, 2048, size=(1, 1, n, d))
    q = np.zeros((1, 1, 1, d), dtype=np.int64)
    return layout, build_image(layout, k, v, q)


@pytest.mark.parametrize("d,msb_bits,elems", [(8, 8, 16), (16, 6, 16), (8, 6, 8), (32, 8, 64),
                                              (64, 6, 64), (8, 8, 64), (16, 6, 64)])
def test_plane_readers(d, msb_bits, elems):
    seed = SEED + d + msb_bits + elems
    print(f"seed {seed}")
    rng = random.Random(seed)
    n, capacity = 40, 24
    layout, image = _layout_image(d, msb_bits, n, seed)
    mem = MemoryConfig(max_burst=4, max_outstanding=3)
    sparse = sorted(rng.sample(range(n), 9))
    lists = {"k_msb": list(range(5, 5 + 17)), "k_lsb": sparse, "v": [0, 1, 2, 3, 20, 39]}
    _check(layout, image, mem, elems, capacity, d, lists)
    # the same under DRAM latency, a quarter of the bandwidth, stalls, gaps and backpressure
    _check(layout, image, mem, elems, capacity, d, lists, latency=7, bpc=4, stall=60, gap=0.4,
           backpressure=0.4, seed=seed)


def test_empty_single_and_full_lists():
    print(f"seed {SEED}")
    layout, image = _layout_image(16, 8, 24, SEED)
    mem = MemoryConfig(max_burst=16)
    _check(layout, image, mem, 16, 24, 16, {"k_msb": [], "k_lsb": [7], "v": list(range(24))})


def test_bad_base_and_dram_error_do_not_hang():
    layout, image = _layout_image(16, 8, 24, SEED)
    mem = MemoryConfig(max_burst=4)
    jobs = {"k_msb": buffer_runs([1, 2, 3])}
    # a misaligned base: the run is dropped with an error, nothing is requested
    _, info = _simulate(layout, image, mem, 16, 24, jobs, 16, base_override=8)
    assert info["errors"]["k_msb"] == 1 and info["requests"] == 0
    # a base beyond the memory: the DRAM answers with error beats; the reader flags it and ends
    _, info = _simulate(layout, image, mem, 16, 24, jobs, 16, base_override=1 << 20)
    assert info["errors"]["k_msb"] == 1 and info["dram_error"] == 1


def test_bad_parameters():
    mem = MemoryConfig()
    with pytest.raises(ValueError, match="bits"):
        PlaneReader(bits=0, is_signed=True, elems=64, depth=8, memory=mem, capacity=8)
    with pytest.raises(ValueError, match="elems"):
        PlaneReader(bits=8, is_signed=True, elems=48, depth=8, memory=mem, capacity=8)
    with pytest.raises(TypeError, match="memory"):
        PlaneReader(bits=8, is_signed=True, elems=64, depth=8, memory=None, capacity=8)
    with pytest.raises(ValueError, match="ports"):
        DramArbiter(ports=0, memory=mem)


@pytest.mark.parametrize("urgent,want", [(0b000, [0, 1, 2, 0]), (0b100, [2, 2, 2, 2]),
                                         (0b011, [0, 1, 0, 1])])
def test_arbiter_urgent_ports_first(urgent, want):
    """Every port asks all the time; the grants rotate among the urgent ports when any is
    urgent, else among all (the id FIFO takes max_outstanding = 4 requests)."""
    mem = MemoryConfig()
    arb = DramArbiter(ports=3, memory=mem)
    grants = []

    async def tb(ctx):
        ctx.set(arb.urgent, urgent)
        ctx.set(arb.dram_req.ready, 1)
        for i in range(3):
            ctx.set(arb.req(i).valid, 1)
            ctx.set(arb.req(i).payload.addr, 16 * i)
            ctx.set(arb.req(i).payload.beats, 1)
        for _ in range(12):
            grants.extend(i for i in range(3) if ctx.get(arb.req(i).ready))
            await ctx.tick()

    sim = Simulator(arb)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert grants == want


@pytest.mark.parametrize("msb_bits,kind", [(8, "k_msb"), (8, "k_lsb"), (6, "k_msb"),
                                           (6, "k_lsb"), (6, "v")])
def test_reader_throughput(msb_bits, kind):
    """One long run, no DRAM latency to speak of: the reader takes a beat a cycle for every
    plane width (chunks of 2 groups of 8- and 12-bit elements, 4 groups of 4- and 6-bit ones)."""
    cycles_per_beat = 1
    d, n = 64, 96
    layout, image = _layout_image(d, msb_bits, n, seed=5)
    lists = {k: [] for k in KINDS}
    lists[kind] = list(range(n))
    info = _check(layout, image, MemoryConfig(msb_bits=msb_bits), 64, n, d, lists)
    beats = info["bytes"] // 16
    # set-up, latency and the idle tail: a few dozen cycles
    assert beats * cycles_per_beat <= info["cycles"] <= beats * cycles_per_beat + 40, \
        (info["cycles"], beats)


@pytest.mark.parametrize("bits,d,gap,stall", [(8, 16, 0.0, 0.0), (12, 64, 0.4, 0.4),
                                               (4, 32, 0.3, 0.7), (6, 8, 0.0, 0.5)])
def test_burst_issuer(bits, d, gap, stall):
    """Runs -> the requests `PlaneLayout.run_requests` predicts, in order, and one record per
    run (skip, beats, bursts, groups, first element) under random command gaps and backpressure
    on both outputs; a count-0 run does nothing, a bad base is dropped; the first request of a
    run is offered `ISSUE_LATENCY` cycles after it is taken."""
    seed = SEED + bits + d
    print("seed", seed)
    rng = random.Random(seed)
    mem = MemoryConfig(max_burst=4)
    capacity, elems = 48, 64
    dut = BurstIssuer(bits=bits, elems=elems, memory=mem, capacity=capacity)
    row_bytes = d * bits // 8
    plane = PlaneLayout(base=0x1000, rows=200, row_bytes=row_bytes, elem_bits=bits, signed=True)
    runs = [{"start": rng.randrange(0, 150), "count": rng.randrange(1, capacity // 2),
             "dst": rng.randrange(0, capacity // 2)} for _ in range(6)]
    runs.insert(2, {"start": 5, "count": 0, "dst": 0})
    want_reqs, want_info = [], []
    for r in runs:
        fetch = plane.run_requests(r["start"], r["count"], mem.beat_bytes, mem.max_burst)
        want_reqs += [{"addr": q.addr, "beats": q.beats} for q in fetch.requests]
        if r["count"]:
            beats = fetch.beats
            want_info.append({"skip": fetch.skip, "beats": beats,
                              "bursts": -(-beats // mem.max_burst),
                              "groups": r["count"] * d // 8, "dst_e": r["dst"] * d})
    res = run_streams(dut, sources={"cmd": runs}, sinks={"req": len(want_reqs),
                                                         "info": len(want_info)},
                      gap=gap, stall=stall, seed=seed, quiet=6,
                      sideband={"cmd": [{"base": plane.base, "d_log2": d.bit_length() - 1}]
                                * len(runs)})
    assert res["beats"]["req"] == want_reqs
    assert res["beats"]["info"] == want_info
    if gap == stall == 0.0:
        assert res["seen"]["req"][0] - res["accepted"]["cmd"][0] == ISSUE_LATENCY
    # a misaligned base: dropped, nothing issued
    dropped = []
    bad = run_streams(dut, sources={"cmd": runs[:1]}, sinks={"req": 0, "info": 0}, quiet=8,
                      sideband={"cmd": [{"base": plane.base + 8, "d_log2": 4}]},
                      watch=lambda ctx, cycle: dropped.append(ctx.get(dut.dropped)))
    assert bad["beats"] == {"req": [], "info": []} and sum(dropped) == 1
