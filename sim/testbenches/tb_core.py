"""cocotb testbench of the memory side (`hw/memory/core.py` behind the DRAM model), run by
`sim/core_run.py`.

Each job is one head group: a DRAM image (`golden.dram_image`) loaded through the model's
``load`` port, a descriptor, a list of surviving tokens, queries of the group's query heads.
Model: `golden.progressive.run_group`. Checker: every output (by tag, in the golden order), every
row beat (tag, precision, refetch), every final probability, the refetch count, and the DRAM
beats of each tensor (x B = `GroupResult.dram_bytes`), under DRAM latency, bandwidth limits and
stalls and random stream gaps and backpressure; bad jobs end with their error code and a good
job follows. Jobs are sent one at a time (the counters then belong to one job) and back to back
(two in flight: the next job's fetch overlaps this one's compute; the counters are checked over
the whole sequence).
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from amaranth.hdl import unsigned
from amaranth.lib import data
from cocotb.triggers import ReadOnly, RisingEdge

from spatten.config import AttentionConfig, Config, MemoryConfig
from spatten.golden import attention as golden
from spatten.golden.dram_image import ImageLayout, build_image
from spatten.golden.progressive import TENSORS, group_planes, run_group, tau_fixed
from spatten.hw.attention.attention import output_layout, row_info_layout
from spatten.hw.common.rowstream import row_layout
from spatten.hw.memory.core import CoreError, job_layout, query_cmd_layout, survivor_layout

from ..infra.bench import UnitBench
from ..infra.streams import with_timeout
from ..infra.testbench import tb_settings
from ..models.dram import image_beats

_SET = tb_settings()
CFG = AttentionConfig(**_SET.get("config", {}))
MEM = MemoryConfig(**_SET.get("memory", {}))
DEPTH = int(_SET.get("depth_beats", 2048))
SEED = int(_SET.get("seed", 1))
HAS_JOBS = "jobs" in _SET
FULL = Config(attention=CFG, memory=MEM)
G = MEM.group_size
B = MEM.beat_bytes
S = CFG.softmax_lanes
DMAX = min(CFG.qk_mults, CFG.pv_mults)
LOAD_LAYOUT = None      # set in start() from the port width


class Bench(UnitBench):
    """The core's DRAM image loader, its three input streams and three output streams."""

    INPUTS = {**dict.fromkeys(("dram_load__valid", "job__valid", "survivors__valid",
                               "queries__valid", "o__ready", "probs__ready", "row__ready",
                               "dram_stall"), 0),
              "dram_latency": 1, "dram_bytes_per_cycle": B}

    def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
        super().__init__(dut)
        rnd = random.Random(seed)
        self.load = self.add_source("dram_load", data.StructLayout({
            "addr": range(DEPTH), "data": unsigned(8 * B)}))
        self.surv = self.add_source("survivors", survivor_layout(FULL), idle=idle,
                                    rng=random.Random(rnd.random()))
        self.job = self.add_source("job", job_layout(FULL), idle=idle,
                                   rng=random.Random(rnd.random()))
        self.queries = self.add_source("queries", query_cmd_layout(FULL), idle=idle,
                                       rng=random.Random(rnd.random()))
        self.o = self.add_sink("o", output_layout(CFG), stall=stall,
                               rng=random.Random(rnd.random()))
        self.probs = self.add_sink("probs", row_layout(unsigned(CFG.prob_bits), S),
                                   stall=stall, rng=random.Random(rnd.random()))
        self.row = self.add_sink("row", row_info_layout(CFG), stall=stall,
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

    def send_job(self, desc, survivors, queries):
        """Queue a job's descriptor, survivor beats (none for an empty list) and query beats."""
        self.job.send_nowait([desc])
        if len(survivors):
            self.surv.send_nowait([{"index": int(t), "last": int(i == len(survivors) - 1)}
                                   for i, t in enumerate(survivors)])
        self.queries.send_nowait([{"head": int(h), "row": int(r),
                                   "last": int(i == len(queries) - 1)}
                                  for i, (h, r) in enumerate(queries)])

    def counters(self):
        d = self.dut
        return {t: int(getattr(d, f"beats_{t}").value) for t in TENSORS}

    def status(self):
        """The status counters (since reset) and the last ended job's error."""
        d = self.dut
        return {"jobs_done": int(d.jobs_done.value), "refetched": int(d.refetched.value),
                "busy_cycles": int(d.busy_cycles.value),
                "wait": {w: int(getattr(d, f"wait_{w}").value) for w in ("k", "q", "lsb", "v")},
                "error": int(d.error.value), "code": CoreError(int(d.error_code.value)).name}

    async def collect(self, n_queries, timeout):
        """One job's outputs (its ``o`` packet), and for a good job its row beats (up to the
        n_queries-th final pass) and the final probabilities of each query."""
        outs = await with_timeout(self.o.recv_packet(), self.dut, timeout)
        rows, probs = [], []
        if not outs[-1]["error"]:
            finals = 0
            while finals < n_queries:
                r = await with_timeout(self.row.recv(), self.dut, timeout)
                rows.append(r)
                finals += not r["refetch"]
            for _ in range(n_queries):
                pk = await with_timeout(self.probs.recv_packet(), self.dut, timeout)
                probs.append([int(x) for b in pk for x in b["data"][:b["count"]]])
        return outs, rows, probs


async def start(dut, idle=0.0, stall=0.0, seed=SEED) -> Bench:
    return await Bench.start(dut, idle=idle, stall=stall, seed=seed)


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


def job_desc(grp, n, *, k_v=None, renorm=False, tau=None, fill="mid", bases=None,
             d_log2=None):
    """The job descriptor (`hw.memory.core.job_layout`) of one head group of `make_group`."""
    lay = grp["layout"]
    planes = group_planes(lay, 0, 0)
    b = bases or {}
    p = grp["params"]
    return {"n": n, "n_stored": lay.n_max,
            "k_msb_base": b.get("k_msb", planes.k_msb.base),
            "k_lsb_base": b.get("k_lsb", planes.k_lsb.base),
            "v_base": b.get("v", planes.v.base),
            "q_base": [planes.q[h].base for h in range(G)],
            "d_log2": grp["d"].bit_length() - 1 if d_log2 is None else d_log2,
            "k_v": n if k_v is None else k_v, "renorm": int(renorm),
            "shift": p.shift, "scale": p.scale, "post_shift": p.post_shift,
            "pq": int(tau is not None), "tau": 0 if tau is None else tau_fixed(tau),
            "fill_mid": int(fill == "mid")}


def reference(grp, survivors, queries, *, k_v=None, renorm=False, tau=None, fill="mid"):
    return run_group(CFG, group_planes(grp["layout"], 0, 0), grp["k"], grp["v"],
                     list(grp["q"]), survivors, queries, grp["params"], tau=tau, fill=fill,
                     memory=MEM, k_v=k_v, renorm=renorm)


def compare(grp, ref, queries, outs, rows, probs) -> list[str]:
    """A good job's outputs, row beats and probabilities against the golden model."""
    errs = []
    if outs[-1]["error"]:
        return ["an error beat"]
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
    return errs


async def run_job(bench, grp, survivors, queries, *, k_v=None, renorm=False, tau=None,
                  fill="mid", timeout=400_000):
    """Run one good job; returns the mismatches against the golden model."""
    dut = bench.dut
    await bench.load_image(grp["image"])
    n = len(survivors)
    ref = reference(grp, survivors, queries, k_v=k_v, renorm=renorm, tau=tau, fill=fill)
    before, st0 = bench.counters(), bench.status()
    bench.send_job(job_desc(grp, n, k_v=k_v, renorm=renorm, tau=tau, fill=fill),
                   survivors, queries)
    outs, rows, probs = await bench.collect(len(queries), timeout)
    await RisingEdge(dut.clk)
    await ReadOnly()
    after, st1 = bench.counters(), bench.status()
    await RisingEdge(dut.clk)
    if st1["error"]:
        return [f"error {st1['code']}"]
    errs = compare(grp, ref, queries, outs, rows, probs)
    refetched = st1["refetched"] - st0["refetched"]
    if refetched != int(ref.refetched.sum()):
        errs.append(f"refetched {refetched} != {int(ref.refetched.sum())}")
    got_bytes = {t: (after[t] - before[t]) * B for t in TENSORS}
    want_bytes = {t: v for t, v in ref.dram_bytes(B).items() if t != "total"}
    if got_bytes != want_bytes:
        errs.append(f"DRAM bytes {got_bytes} != golden {want_bytes}")
    if st1["jobs_done"] != st0["jobs_done"] + 1:
        errs.append(f"jobs_done went from {st0['jobs_done']} to {st1['jobs_done']}")
    return errs


async def run_bad(bench, grp, survivors, queries, expect, **kw):
    dut = bench.dut
    await bench.load_image(grp["image"])
    desc = job_desc(grp, kw.pop("n", len(survivors)), **kw)
    before = bench.counters()
    bench.send_job(desc, survivors, queries)
    outs = await with_timeout(bench.o.recv_packet(), dut, 200_000)
    await RisingEdge(dut.clk)
    await ReadOnly()
    code = CoreError(int(dut.error_code.value)).name
    flag = int(dut.error.value)
    read = {t: n - before[t] for t, n in bench.counters().items()}
    await RisingEdge(dut.clk)
    if not (flag and code == expect and outs[-1]["error"]):
        return [f"bad job: expected {expect}, got error={flag} {code}"]
    if expect in ("N_ZERO", "N_OVER_CAPACITY", "MISALIGNED", "BAD_HEAD_DIM", "K_V_ZERO") \
            and any(read.values()):
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
    (n = 0), a list over capacity, a misaligned base, a head dimension out of range and k_v = 0
    read nothing; a query head outside the group runs as head 0 and flags the job; a good job
    follows."""
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
    errs += await run_bad(bench, grp, [1, 2], q, "BAD_HEAD_DIM", d_log2=2)
    errs += await run_bad(bench, grp, [1, 2], q, "K_V_ZERO", k_v=0)
    # a query head outside the group: the job runs (as head 0) and ends flagged
    bench.send_job(job_desc(grp, 2), [1, 2], [(G, 1)])
    outs, _, _ = await bench.collect(1, 200_000)
    await RisingEdge(dut.clk)
    await ReadOnly()
    st = bench.status()
    await RisingEdge(dut.clk)
    if not (st["error"] and st["code"] == "BAD_HEAD" and not outs[-1]["error"]):
        errs.append(f"BAD_HEAD: got {st['code']} (error {st['error']}), outputs {len(outs)}")
    errs += [f"good after bad: {e}" for e in await run_job(bench, grp, [0, 4, 5, 6, 39], q,
                                                             tau=0.3)]
    assert not errs, "\n".join(errs)


@cocotb.test(skip=HAS_JOBS)
async def jobs_back_to_back(dut):
    """Jobs sent back to back, two in flight (the next job's survivors, K, V and Q rows are
    fetched while this one computes, into the other bank when both fit in half the buffer):
    every job's outputs, rows and probabilities against the golden model, the DRAM bytes of
    each tensor over the whole sequence, with stream gaps, backpressure and DRAM latency; refused
    jobs in the middle end with their error beat and the jobs after them are unaffected."""
    rng = np.random.default_rng(SEED + 3)
    dut._log.info(f"seed {SEED + 3}")
    bench = await start(dut, idle=0.2, stall=0.2, seed=SEED + 7)
    dut.dram_latency.value = 17
    dims = [x for x in (8, 16, 32, 64) if x <= DMAX]
    n_stored = min(3 * CFG.capacity // 2, 90)
    half = CFG.capacity // 2
    errs = []
    for d in (dims[0], dims[-1]):
        grp = make_group(rng, n_stored=n_stored, m_rows=5, d=d)
        await bench.load_image(grp["image"])
        jobs = []
        for i in range(10):
            size = [half // 2, half, CFG.capacity, half - 3, 3][i % 5]
            surv = sorted(int(x) for x in rng.choice(n_stored, size=size, replace=False))
            queries = [(int(rng.integers(0, G)), int(rng.integers(0, 5)))
                       for _ in range(int(rng.integers(1, 5)))]
            kw = {"k_v": [None, max(1, size // 3)][i % 2],
                  "tau": [None, None, 0.15, 0.0, 1.0][(i * 3) % 5],
                  "renorm": i % 3 == 0}
            if i in (4, 7):       # refused at intake: nothing fetched, queries swallowed
                bad = {4: {"bases": {"k_lsb": 8}}, 7: {"d_log2": 2}}[i]
                jobs.append((surv, queries, None, job_desc(grp, size, **bad)))
                continue
            jobs.append((surv, queries, reference(grp, surv, queries, **kw),
                         job_desc(grp, size, **kw)))
        before, st0 = bench.counters(), bench.status()
        for surv, queries, _, desc in jobs:
            bench.send_job(desc, surv, queries)
        for i, (surv, queries, ref, _) in enumerate(jobs):
            outs, rows, probs = await bench.collect(len(queries) if ref else 0, 400_000)
            if ref is None:
                if not (len(outs) == 1 and outs[0]["error"]):
                    errs.append(f"d={d} job {i}: expected one error beat, got {len(outs)}")
                continue
            errs += [f"d={d} job {i} n={len(surv)}: {e}"
                     for e in compare(grp, ref, queries, outs, rows, probs)]
        await RisingEdge(dut.clk)
        await ReadOnly()
        after, st1 = bench.counters(), bench.status()
        await RisingEdge(dut.clk)
        got = {t: (after[t] - before[t]) * B for t in TENSORS}
        want = {t: sum(ref.dram_bytes(B)[t] for _, _, ref, _ in jobs if ref) for t in TENSORS}
        if got != want:
            errs.append(f"d={d}: DRAM bytes {got} != golden {want}")
        refetched = sum(int(ref.refetched.sum()) for _, _, ref, _ in jobs if ref)
        if st1["refetched"] - st0["refetched"] != refetched:
            errs.append(f"d={d}: refetched {st1['refetched'] - st0['refetched']} != {refetched}")
        if st1["jobs_done"] - st0["jobs_done"] != len(jobs):
            errs.append(f"d={d}: jobs_done {st1['jobs_done'] - st0['jobs_done']} != {len(jobs)}")
        dut._log.info(f"d={d}: {len(jobs)} jobs in {st1['busy_cycles'] - st0['busy_cycles']} "
                      f"busy cycles, waits {st1['wait']}")
    # the overlap itself: the good jobs of the last sequence without gaps or backpressure, one
    # at a time and then back to back; the second way takes fewer cycles
    for src in (bench.job, bench.surv, bench.queries):
        src.idle_prob = 0.0
    for sink in (bench.o, bench.probs, bench.row):
        sink.stall_prob = 0.0
    good = [j for j in jobs if j[2] is not None]
    alone = 0
    for surv, queries, ref, desc in good:
        st0 = bench.status()
        bench.send_job(desc, surv, queries)
        errs += [f"alone: {e}" for e in compare(grp, ref, queries,
                                                *await bench.collect(len(queries), 400_000))]
        await RisingEdge(dut.clk)
        await ReadOnly()
        alone += bench.status()["busy_cycles"] - st0["busy_cycles"]
        await RisingEdge(dut.clk)
    st0 = bench.status()
    for surv, queries, _ref, desc in good:
        bench.send_job(desc, surv, queries)
    for _surv, queries, ref, _desc in good:
        errs += [f"back to back: {e}" for e in compare(
            grp, ref, queries, *await bench.collect(len(queries), 400_000))]
    await RisingEdge(dut.clk)
    await ReadOnly()
    together = bench.status()["busy_cycles"] - st0["busy_cycles"]
    dut._log.info(f"{len(good)} jobs: {alone} busy cycles one at a time, {together} back to back")
    if not together < alone:
        errs.append(f"no overlap: {together} cycles back to back, {alone} one at a time")
    assert not errs, "\n".join(errs)


@cocotb.test(skip=not HAS_JOBS)
async def run_jobs(dut):
    """Job mode (`sim.core_run.run_core`): run the given jobs, write what the RTL produced."""
    import json
    from pathlib import Path

    bench = await start(dut, _SET.get("idle", 0.0), _SET.get("stall", 0.0))
    results = []
    jobs = _SET["jobs"]
    batches = []                  # consecutive jobs of one batch go back to back
    for i, job in enumerate(jobs):
        key = job.get("batch", f"job{i}")
        if batches and batches[-1][0] == key:
            batches[-1][1].append(job)
        else:
            batches.append((key, [job]))
    for _, batch in batches:
        first = batch[0]
        if any(j["image"] != first["image"] for j in batch):
            raise ValueError("the jobs of one batch must share their DRAM image")
        await bench.load_image(Path(first["image"]).read_bytes())
        dut.dram_latency.value = first.get("latency", 1)
        dut.dram_bytes_per_cycle.value = first.get("bytes_per_cycle", B)
        dut.dram_stall.value = first.get("stall", 0)
        before, st0 = bench.counters(), bench.status()
        for job in batch:
            desc = {name: int(job[name]) for name in (
                "n", "n_stored", "k_msb_base", "k_lsb_base", "v_base", "d_log2", "k_v",
                "renorm", "shift", "scale", "post_shift", "pq", "tau", "fill_mid")}
            desc["q_base"] = [int(job["q_base"][h]) if h < len(job["q_base"]) else 0
                              for h in range(G)]
            bench.send_job(desc, job["survivors"], [tuple(q) for q in job["queries"]])
        got = []
        for job in batch:
            timeout = job.get("timeout", 2_000_000)
            outs, rows, probs = await bench.collect(len(job["queries"]), timeout)
            await RisingEdge(dut.clk)
            await ReadOnly()
            st = bench.status()       # the error of the job that just ended
            await RisingEdge(dut.clk)
            got.append((outs, rows, probs, st))
        await RisingEdge(dut.clk)
        await ReadOnly()
        after, st1 = bench.counters(), bench.status()
        stats = {"jobs": len(batch), "beats": {t: after[t] - before[t] for t in TENSORS},
                 "cycles": st1["busy_cycles"] - st0["busy_cycles"],
                 "memory_wait": {w: st1["wait"][w] - st0["wait"][w] for w in st1["wait"]},
                 "refetched": st1["refetched"] - st0["refetched"],
                 "dram_error": int(dut.dram_error.value)}
        await RisingEdge(dut.clk)
        for outs, rows, probs, st in got:
            # beats, cycles, memory_wait, refetched: of the job's batch (the job's own when it
            # ran alone)
            results.append({
                "tags": [int(b["tag"]) for b in outs],
                "out": [[int(x) for x in b["data"]] for b in outs],
                "error_beat": int(bool(outs[-1]["error"])),
                "probs": probs,
                "rows": [{k: int(r[k]) for k in ("tag", "full", "refetch", "p_max")}
                         for r in rows],
                "error": st["code"] if st["error"] else "NONE",
                "error_flag": st["error"],
                "batch": stats, **{k: stats[k] for k in ("beats", "cycles", "memory_wait",
                                                         "refetched", "dram_error")},
            })
    Path(_SET["results"]).write_text(json.dumps(results))
