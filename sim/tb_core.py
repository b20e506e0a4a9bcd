"""cocotb testbench of the memory side (`hw/core.py` behind the DRAM model), run by
`sim/core_run.py`.

Each job is one head group: a DRAM image (`golden.dram_image`) loaded through the model's
``load`` port, a list of surviving tokens, queries of the group's query heads. Model:
`golden.progressive.run_group`. Checker: every output (by tag, in the golden order), every row
beat (tag, precision, refetch), every final probability, the refetch count, and the DRAM beats of
each tensor (x B = `GroupResult.dram_bytes`), under DRAM latency, bandwidth limits and stalls and
random stream gaps and backpressure; bad jobs end with their error code and a good job follows.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from amaranth.hdl import unsigned
from cocotb.triggers import ReadOnly, RisingEdge

from spatten.config import AttentionConfig, MemoryConfig
from spatten.golden import attention as golden
from spatten.golden.dram_image import ImageLayout, build_image
from spatten.golden.progressive import TENSORS, group_planes, run_group, tau_fixed
from spatten.hw.attention import output_layout, row_info_layout
from spatten.hw.core import CoreError, query_cmd_layout, survivor_layout
from spatten.hw.rowstream import row_layout

from .dram import image_beats
from .streams import StreamSink, StreamSource, clock_and_reset, with_timeout
from .unit_run import tb_settings

_SET = tb_settings()
CFG = AttentionConfig(**_SET.get("config", {}))
MEM = MemoryConfig(**_SET.get("memory", {}))
G = int(_SET.get("group", 3))
DEPTH = int(_SET.get("depth_beats", 2048))
SEED = int(_SET.get("seed", 1))
HAS_JOBS = "jobs" in _SET
B = MEM.beat_bytes
TB = 16
AW = 32
S = CFG.softmax_lanes
DMAX = min(CFG.qk_mults, CFG.pv_mults)
LOAD_LAYOUT = None      # set in start() from the port width


class Bench:
    def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
        self.dut = dut
        clk = dut.clk
        rnd = random.Random(seed)
        from amaranth.lib import data
        self.load = StreamSource(dut, "dram_load", clk, data.StructLayout({
            "addr": range(DEPTH), "data": unsigned(8 * B)}))
        self.surv = StreamSource(dut, "survivors", clk, survivor_layout(TB), idle_prob=idle,
                                 rng=random.Random(rnd.random()))
        self.queries = StreamSource(dut, "queries", clk, query_cmd_layout(TB, G),
                                    idle_prob=idle, rng=random.Random(rnd.random()))
        self.o = StreamSink(dut, "o", clk, output_layout(CFG), stall_prob=stall,
                            rng=random.Random(rnd.random()))
        self.probs = StreamSink(dut, "probs", clk, row_layout(unsigned(CFG.prob_bits), S),
                                stall_prob=stall, rng=random.Random(rnd.random()))
        self.row = StreamSink(dut, "row", clk, row_info_layout(CFG), stall_prob=stall,
                              rng=random.Random(rnd.random()))
        self.image = None

    async def load_image(self, image: bytes):
        if image == self.image:
            return
        beats = image_beats(image, B)
        if len(beats) > DEPTH:
            raise ValueError(f"image of {len(beats)} beats exceeds the model's {DEPTH}")
        await self.load.send([{"addr": a, "data": d} for a, d in enumerate(beats)])
        self.image = image

    def send_job(self, survivors, queries):
        """Queue a job's survivor beats (none for an empty list) and query beats."""
        if len(survivors):
            self.surv.send_nowait([{"index": int(t), "last": int(i == len(survivors) - 1)}
                                   for i, t in enumerate(survivors)])
        self.queries.send_nowait([{"head": int(h), "row": int(r),
                                   "last": int(i == len(queries) - 1)}
                                  for i, (h, r) in enumerate(queries)])

    def counters(self):
        d = self.dut
        return {t: int(getattr(d, f"beats_{t}").value) for t in TENSORS}


async def start(dut, idle=0.0, stall=0.0, seed=SEED) -> Bench:
    for name in ("dram_load__valid", "survivors__valid", "queries__valid", "o__ready",
                 "probs__ready", "row__ready", "dram_stall"):
        getattr(dut, name).value = 0
    dut.dram_latency.value = 1
    dut.dram_bytes_per_cycle.value = B
    await clock_and_reset(dut)
    return Bench(dut, idle, stall, seed)


def make_group(rng, *, n_stored, m_rows, d, spread=1.5):
    """A head group's tensors and layout: integer K, V (n_stored, d), Q (G, m_rows, d)."""
    hi = CFG.data_max

    def qz(shape, s):
        x = rng.normal(size=shape) * s
        sc = float(np.abs(x).max()) / hi or 1.0
        return np.round(x / sc).astype(np.int64), sc

    q, qs = qz((G, m_rows, d), spread)
    k, ks = qz((n_stored, d), spread)
    v, _ = qz((n_stored, d), 1.0)
    lay = ImageLayout(layers=1, kv_heads=1, q_heads=G, n_max=n_stored, m_max=m_rows, d=d,
                      width=CFG.data_width, msb_bits=MEM.msb_bits, beat_bytes=B, align=256,
                      d_max=max(CFG.head_dims))
    image = build_image(lay, k[None, None], v[None, None], q[None])
    return {"q": q, "k": k, "v": v, "layout": lay, "image": image,
            "params": golden.score_params(CFG, qs, ks, d), "d": d}


def set_registers(dut, grp, n, *, k_v=None, renorm=False, tau=None, fill="mid", bases=None):
    lay = grp["layout"]
    planes = group_planes(lay, 0, 0)
    dut.n.value = n
    dut.n_stored.value = lay.n_max
    b = bases or {}
    dut.k_msb_base.value = b.get("k_msb", planes.k_msb.base)
    dut.k_lsb_base.value = b.get("k_lsb", planes.k_lsb.base)
    dut.v_base.value = b.get("v", planes.v.base)
    qb = 0
    for h in range(G):
        qb |= planes.q[h].base << (AW * h)
    dut.q_base.value = qb
    dut.d_log2.value = grp["d"].bit_length() - 1
    dut.k_v.value = n if k_v is None else k_v
    dut.renorm.value = int(renorm)
    p = grp["params"]
    dut.shift.value, dut.scale.value, dut.post_shift.value = p.shift, p.scale, p.post_shift
    dut.pq.value = int(tau is not None)
    dut.tau.value = 0 if tau is None else tau_fixed(tau)
    dut.fill_mid.value = int(fill == "mid")


async def run_job(bench, grp, survivors, queries, *, k_v=None, renorm=False, tau=None,
                  fill="mid", timeout=400_000):
    """Run one good job; returns the mismatches against the golden model."""
    dut = bench.dut
    await bench.load_image(grp["image"])
    n = len(survivors)
    set_registers(dut, grp, n, k_v=k_v, renorm=renorm, tau=tau, fill=fill)
    ref = run_group(CFG, group_planes(grp["layout"], 0, 0), grp["k"], grp["v"],
                    list(grp["q"]), survivors, queries, grp["params"], tau=tau, fill=fill,
                    memory=MEM, k_v=k_v, renorm=renorm)
    before = bench.counters()
    bench.send_job(survivors, queries)
    outs = await with_timeout(bench.o.recv_packet(), dut, timeout)
    rows = [await with_timeout(bench.row.recv(), dut, timeout) for _ in ref.passes]
    probs = []
    for _ in queries:
        pk = await with_timeout(bench.probs.recv_packet(), dut, timeout)
        probs.append([int(x) for b in pk for x in b["data"][:b["count"]]])
    await RisingEdge(dut.clk)
    await ReadOnly()
    after = bench.counters()
    status = (int(dut.error.value), CoreError(int(dut.error_code.value)).name,
              int(dut.refetched.value), int(dut.done.value), int(dut.cycles.value))
    await RisingEdge(dut.clk)
    errs = []
    if status[0]:
        return [f"error {status[1]}"]
    d = grp["d"]
    tags = [int(b["tag"]) for b in outs]
    if tags != ref.order:
        errs.append(f"order {tags} != golden {ref.order}")
    for b in outs:
        t = int(b["tag"])
        if t < len(queries) and [int(x) for x in b["data"][:d]] != ref.out[t].tolist():
            errs.append(f"output of query {t} differs")
    want = ref.row_beats()
    got = [(int(r["tag"]), int(r["full"]), int(r["refetch"])) for r in rows]
    if got != want:
        errs.append(f"row beats {got} != golden {want}")
    if probs != ref.final_probs():
        errs.append("final probabilities differ")
    if status[2] != int(ref.refetched.sum()):
        errs.append(f"refetched {status[2]} != {int(ref.refetched.sum())}")
    got_bytes = {t: (after[t] - before[t]) * B for t in TENSORS}
    want_bytes = {t: v for t, v in ref.dram_bytes(B).items() if t != "total"}
    if got_bytes != want_bytes:
        errs.append(f"DRAM bytes {got_bytes} != golden {want_bytes}")
    if not status[3]:
        errs.append("done not set")
    return errs


async def run_bad(bench, grp, survivors, queries, expect, **kw):
    dut = bench.dut
    await bench.load_image(grp["image"])
    set_registers(dut, grp, kw.pop("n", len(survivors)), **kw)
    before = bench.counters()
    bench.send_job(survivors, queries)
    outs = await with_timeout(bench.o.recv_packet(), dut, 200_000)
    await RisingEdge(dut.clk)
    await ReadOnly()
    code = CoreError(int(dut.error_code.value)).name
    flag = int(dut.error.value)
    read = {t: n - before[t] for t, n in bench.counters().items()}
    await RisingEdge(dut.clk)
    if not (flag and code == expect and outs[-1]["error"]):
        return [f"bad job: expected {expect}, got error={flag} {code}"]
    if expect in ("N_ZERO", "N_OVER_CAPACITY", "MISALIGNED") and any(read.values()):
        return [f"{expect}: the refused job read DRAM beats {read}"]
    return []


def lists(rng, n_stored, cap):
    n = min(cap, n_stored)
    sparse = sorted(rng.choice(n_stored, size=min(n, max(2, n_stored // 3)), replace=False))
    start = int(rng.integers(0, n_stored - n // 2 + 1))
    return {
        "single": [int(rng.integers(0, n_stored))],
        "contiguous": list(range(start, start + n // 2)),
        "sparse": [int(x) for x in sparse],
        "full": list(range(n)),
    }


@cocotb.test(skip=HAS_JOBS)
async def jobs_exact(dut):
    """Outputs, order, rows, probabilities and DRAM bytes per tensor against the golden model:
    index lists single/contiguous/sparse/full, tau None/0/middle/1, value pruning, GQA."""
    rng = np.random.default_rng(SEED)
    dut._log.info(f"seed {SEED}")
    bench = await start(dut)
    errs = []
    dims = [x for x in (8, 16, 32, 64) if x <= DMAX]
    n_stored = min(3 * CFG.capacity // 2, 90)
    for d in (dims[0], dims[-1]):
        grp = make_group(rng, n_stored=n_stored, m_rows=6, d=d, spread=2.0)
        for name, surv in lists(rng, n_stored, CFG.capacity).items():
            queries = [(int(rng.integers(0, G)), int(rng.integers(0, 6)))
                       for _ in range(int(rng.integers(1, 6)))]
            n = len(surv)
            k_v = None if name in ("single", "full") else max(1, n // 3)
            msb = run_group(CFG, group_planes(grp["layout"], 0, 0), grp["k"], grp["v"],
                            list(grp["q"]), surv, queries, grp["params"], tau=0.0,
                            memory=MEM).p_max_msb
            mid = float(np.median(msb)) / 65536 + 1e-6
            for tau in (None, 0.0, mid, 1.0):
                label = f"d={d} {name} n={n} m={len(queries)} k_v={k_v} tau={tau}"
                errs += [f"{label}: {e}" for e in await run_job(
                    bench, grp, surv, queries, k_v=k_v, tau=tau, renorm=name == "sparse")]
    assert not errs, "\n".join(errs)


@cocotb.test(skip=HAS_JOBS)
async def jobs_under_stress(dut):
    """The same checks with DRAM latency, a bandwidth limit and stalls, and random gaps and
    backpressure on every stream."""
    rng = np.random.default_rng(SEED + 1)
    bench = await start(dut, idle=0.3, stall=0.3, seed=SEED + 5)
    errs = []
    dims = [x for x in (8, 16, 32, 64) if x <= DMAX]
    n_stored = min(3 * CFG.capacity // 2, 90)
    for r, (lat, bpc, stall) in enumerate(((13, B, 0), (5, max(1, B // 4), 40),
                                           (30, max(1, B // 2), 120))):
        dut.dram_latency.value = lat
        dut.dram_bytes_per_cycle.value = bpc
        dut.dram_stall.value = stall
        grp = make_group(rng, n_stored=n_stored, m_rows=5, d=dims[r % len(dims)])
        ls = lists(rng, n_stored, CFG.capacity)
        for name in ("sparse", "full"):
            surv = ls[name]
            queries = [(h, int(rng.integers(0, 5))) for h in range(G)]
            for tau in (None, 0.15):
                label = f"lat={lat} bpc={bpc} stall={stall} {name} tau={tau}"
                errs += [f"{label}: {e}" for e in await run_job(
                    bench, grp, surv, queries, tau=tau, k_v=max(1, len(surv) // 4))]
    dut.dram_stall.value = 0
    assert not errs, "\n".join(errs)


@cocotb.test(skip=HAS_JOBS)
async def bad_jobs_then_good(dut):
    """Each bad job ends with one error beat and its code (no hang); an empty survivor list
    (n = 0), a list over capacity and a misaligned base read nothing; a good job follows."""
    rng = np.random.default_rng(SEED + 2)
    bench = await start(dut)
    n_stored = 40
    grp = make_group(rng, n_stored=n_stored, m_rows=4, d=min(16, DMAX))
    q = [(0, 1), (G - 1, 2)]
    errs = []
    errs += await run_bad(bench, grp, [3, 5, n_stored], q, "BAD_INDEX")        # beyond stored
    errs += await run_bad(bench, grp, [3, 9, 9], q, "BAD_INDEX")               # not ascending
    errs += await run_bad(bench, grp, [], q, "N_ZERO", n=0)                    # empty list
    errs += await run_bad(bench, grp, list(range(CFG.capacity + 1)), q, "N_OVER_CAPACITY")
    errs += await run_bad(bench, grp, [1, 2], q, "MISALIGNED", bases={"v": 8})
    errs += [f"good after bad: {e}" for e in await run_job(bench, grp, [0, 4, 5, 6, 39], q,
                                                             tau=0.3)]
    assert not errs, "\n".join(errs)


@cocotb.test(skip=not HAS_JOBS)
async def run_jobs(dut):
    """Job mode (`sim.core_run.run_core`): run the given jobs, write what the RTL produced."""
    import json
    from pathlib import Path

    bench = await start(dut, _SET.get("idle", 0.0), _SET.get("stall", 0.0))
    results = []
    for job in _SET["jobs"]:
        await bench.load_image(Path(job["image"]).read_bytes())
        dut.dram_latency.value = job.get("latency", 1)
        dut.dram_bytes_per_cycle.value = job.get("bytes_per_cycle", B)
        dut.dram_stall.value = job.get("stall", 0)
        for name in ("n", "n_stored", "k_msb_base", "k_lsb_base", "v_base", "d_log2", "k_v",
                     "renorm", "shift", "scale", "post_shift", "pq", "tau", "fill_mid"):
            getattr(dut, name).value = int(job[name])
        dut.q_base.value = sum(int(b) << (AW * h) for h, b in enumerate(job["q_base"]))
        survivors, queries = job["survivors"], job["queries"]
        before = bench.counters()
        bench.send_job(survivors, queries)
        timeout = job.get("timeout", 2_000_000)
        outs = await with_timeout(bench.o.recv_packet(), dut, timeout)
        error = bool(outs[-1]["error"])
        rows, probs = [], []
        if not error:
            for _ in range(len(queries)):
                pk = await with_timeout(bench.probs.recv_packet(), dut, timeout)
                probs.append([int(x) for b in pk for x in b["data"][:b["count"]]])
            rows = bench.row.drain()    # every pass's row beat (dropped MSB passes included)
        await RisingEdge(dut.clk)
        await ReadOnly()
        after = bench.counters()
        res = {
            "tags": [int(b["tag"]) for b in outs],
            "out": [[int(x) for x in b["data"]] for b in outs],
            "error_beat": int(error),
            "probs": probs,
            "rows": [{k: int(r[k]) for k in ("tag", "full", "refetch", "p_max")} for r in rows],
            "beats": {t: after[t] - before[t] for t in TENSORS},
            "cycles": int(dut.cycles.value),
            "memory_wait": {w: int(getattr(dut, f"wait_{w}").value)
                            for w in ("k", "q", "lsb", "v")},
            "refetched": int(dut.refetched.value),
            "error": CoreError(int(dut.error_code.value)).name,
            "error_flag": int(dut.error.value),
            "dram_error": int(dut.dram_error.value),
        }
        await RisingEdge(dut.clk)
        results.append(res)
    Path(_SET["results"]).write_text(json.dumps(results))
