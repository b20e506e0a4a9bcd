"""The query pipeline (`hw/attention/attention.py`) in cocotb: its testbench, and the runs of its
RTL that the benchmarks use.

`attention_selftest(cfg, sim=, seed=)` runs the self-checking tests below
(tests/test_attention.py); `run_attention(cfg, jobs)` runs jobs (`job_from_arrays`) and returns,
per job, what the RTL produced: outputs, probabilities, row maxima, cycles and
multiply-accumulates, status. Both go through `spatten.sim.infra.testbench` (settings: the
`AttentionConfig` fields, ``seed``, ``random_runs``, ``msb_bits``, or the ``jobs`` of job mode).

The bench (`spatten.sim.infra.bench.UnitBench`): drivers `StreamSource` on ``load`` and ``q``
(random idle cycles when asked), monitors `StreamSink` on ``o``, ``probs`` and ``row`` (random
backpressure when asked). Model: `spatten.golden.attention.attention`. Checker: every output
element, every probability and every row maximum, in order, after each run; status and counters.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from amaranth.hdl import unsigned
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from spatten.config import AttentionConfig, MemoryConfig
from spatten.golden import attention as golden
from spatten.hw.attention.attention import (
    Attention,
    ErrorCode,
    load_layout,
    output_layout,
    query_layout,
    row_info_layout,
)
from spatten.hw.common.rowstream import row_layout

from ..infra.bench import UnitBench, tb_config
from ..infra.runner import CocotbResult
from ..infra.streams import with_timeout
from ..infra.testbench import cfg_tag, run_testbench, run_testbench_jobs, write_results

__all__ = ["run_attention", "attention_selftest", "make_top", "job_from_arrays", "TOPLEVEL"]

TOPLEVEL = "attention"
#: How the pipeline splits K into planes unless told otherwise: the memory side's split.
MSB_BITS = MemoryConfig().msb_bits


# ------------------------------------------------------------------------------ pytest side
def make_top(cfg: AttentionConfig, msb_bits: int = MSB_BITS) -> Attention:
    return Attention(config=cfg, memory=MemoryConfig(msb_bits=msb_bits))


def job_from_arrays(q, k, v, params, k_v=None, renorm=False) -> dict:
    """A job for `run_attention` from integer arrays and `golden.attention.ScoreParams`."""
    q, k, v = (np.asarray(x, dtype=np.int64) for x in (q, k, v))
    return {"q": q.tolist(), "k": k.tolist(), "v": v.tolist(), "n": int(k.shape[0]),
            "d": int(q.shape[1]), "params": [int(params.shift), int(params.scale),
                                             int(params.post_shift)],
            "k_v": None if k_v is None else int(k_v), "renorm": bool(renorm)}


def run_attention(cfg: AttentionConfig, jobs: list[dict], *, sim: str = "verilator",
                  idle: float = 0.0, stall: float = 0.0, purpose: str = "rtl") -> list[dict]:
    """Run `jobs` (see `job_from_arrays`) through the RTL; one result dict per job."""
    return run_testbench_jobs(lambda: make_top(cfg), jobs, name=TOPLEVEL, tb_module=__name__,
                              config=cfg, sim=sim, idle=idle, stall=stall, purpose=purpose)


def attention_selftest(cfg: AttentionConfig, *, sim: str, seed: int, random_runs: int = 6,
                       testcase=None, msb_bits: int = MSB_BITS) -> CocotbResult:
    """Run the self-checking tests below (K split into ``msb_bits`` + the rest); raises
    `CocotbFailure` when one fails."""
    tag = cfg_tag(cfg) + ("" if msb_bits == MSB_BITS else f"-msb{msb_bits}")
    return run_testbench(lambda: make_top(cfg, msb_bits), name=TOPLEVEL, tb_module=__name__,
                         config=cfg, tag=tag, sim=sim, testcase=testcase, purpose="rtl",
                         settings={"seed": seed, "random_runs": random_runs,
                                   "msb_bits": msb_bits})


# ------------------------------------------------------------------------------ cocotb side
CFG, SEED, _SETTINGS = tb_config(random_runs=6, msb_bits=MSB_BITS)
RUN_MSB_BITS = int(_SETTINGS["msb_bits"])
RANDOM_RUNS = int(_SETTINGS["random_runs"])
HAS_JOBS = "jobs" in _SETTINGS
M, MV, S = CFG.qk_mults, CFG.pv_mults, CFG.softmax_lanes
WORD = max(M, MV)

PROBS_LAYOUT = row_layout(unsigned(CFG.prob_bits), S)


# ------------------------------------------------------------------------------ jobs
def load_beats(k, v) -> list[dict]:
    """The `load` beats that write K and V (flat, row-major) into their buffers."""
    beats = []
    for target, arr, width in ((0, k, M), (1, v, MV)):
        flat = [int(x) for x in np.asarray(arr).reshape(-1)]
        for w in range(-(-len(flat) // width)):
            chunk = flat[w * width:(w + 1) * width]
            beats.append({"target": target, "addr": w, "data": chunk + [0] * (WORD - len(chunk))})
    return beats


def query_beats(q) -> list[dict]:
    q = np.asarray(q)
    return [{"data": [int(x) for x in row] + [0] * (M - q.shape[1]),
             "last": int(i == q.shape[0] - 1)} for i, row in enumerate(q)]


class Bench(UnitBench):
    """The pipeline's two input streams and three output streams."""

    INPUTS = {**dict.fromkeys(("load__valid", "q__valid", "o__ready", "probs__ready",
                               "row__ready", "n", "d_log2", "k_v", "renorm", "shift", "scale",
                               "post_shift", "pq", "tau", "fill_mid", "k_msb_wr__valid",
                               "k_lsb_wr__valid", "v_wr__valid", "v_wait", "v_done", "bank"), 0),
              "lsb_ready": 1, "kept__ready": 1}

    def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
        super().__init__(dut)
        self.load = self.add_source("load", load_layout(CFG), idle=idle,
                                    rng=random.Random(seed + 1))
        self.q = self.add_source("q", query_layout(CFG), idle=idle, rng=random.Random(seed + 2))
        self.o = self.add_sink("o", output_layout(CFG), stall=stall, rng=random.Random(seed + 3))
        self.probs = self.add_sink("probs", PROBS_LAYOUT, stall=stall,
                                   rng=random.Random(seed + 4))
        self.row = self.add_sink("row", row_info_layout(CFG), stall=stall,
                                 rng=random.Random(seed + 5))

    def set_registers(self, n, d, k_v, renorm, params):
        dut = self.dut
        dut.n.value = int(n)
        dut.d_log2.value = int(d).bit_length() - 1 if d > 0 else 0
        dut.k_v.value = int(n if k_v is None else k_v)
        dut.renorm.value = int(bool(renorm))
        dut.shift.value, dut.scale.value, dut.post_shift.value = (int(x) for x in params)

    async def run(self, job: dict, timeout: int) -> dict:
        """Load K and V (when given), run the queries, collect everything."""
        dut = self.dut
        q = np.asarray(job["q"], dtype=np.int64)
        bank = int(job.get("bank", 0))
        if job.get("k") is not None:
            beats = load_beats(job["k"], job["v"])
            for b in beats:              # the upper bank starts at word capacity/2
                b["addr"] += bank * (CFG.capacity // 2)
            await self.load.send(beats)
        self.set_registers(job["n"], job["d"], job.get("k_v"), job.get("renorm", False),
                           job["params"])
        dut.bank.value = bank
        self.q.send_nowait(query_beats(q))
        outs = await with_timeout(self.o.recv_packet(), dut, timeout)
        error = any(b["error"] for b in outs)
        probs, rows = [], []
        if not error:
            for _ in range(q.shape[0]):
                packet = await with_timeout(self.probs.recv_packet(), dut, timeout)
                row = []
                for b in packet:
                    row += [int(x) for x in b["data"][:b["count"]]]
                    if not b["last"] and b["count"] != S:
                        raise AssertionError("a probability beat before the row's last is partial")
                probs.append(row)
                rows.append(await with_timeout(self.row.recv(), dut, timeout))
        await self.q.wait_idle()
        await RisingEdge(dut.clk)
        await ReadOnly()
        res = {
            "out": [[int(x) for x in b["data"]] for b in outs],
            "error_beat": int(error),
            "probs": probs,
            "p_max": [int(r["p_max"]) for r in rows],
            "max": [int(r["max"]) for r in rows],
            "esum": [int(r["esum"]) for r in rows],
            "cycles": int(dut.cycles.value),
            "macs": int(dut.macs.value),
            "queries": int(dut.queries.value),
            "error": ErrorCode(int(dut.error_code.value)).name,
            "error_flag": int(dut.error.value),
            "done": int(dut.done.value),
            "busy": int(dut.busy.value),
        }
        await RisingEdge(dut.clk)
        return res


def timeout_for(n, d, m) -> int:
    return 40 * (m + 4) * (n // S + n * d // M + 64) + 5000


# ------------------------------------------------------------------------------ the checker
def check(job, res, label) -> list[str]:
    q, k, v = (np.asarray(job[x], dtype=np.int64) for x in ("q", "k", "v"))
    params = golden.ScoreParams(*job["params"])
    ref = golden.attention(CFG, q, k, v, params, job.get("k_v"), job.get("renorm", False))
    errs = []
    d = q.shape[1]
    if res["error"] != "NONE" or res["error_beat"]:
        return [f"{label}: unexpected error {res['error']}"]
    got = np.array([row[:d] for row in res["out"]])
    if got.shape != ref.out.shape or not np.array_equal(got, ref.out):
        bad = np.argwhere(got != ref.out) if got.shape == ref.out.shape else [[0, 0]]
        i, j = bad[0]
        errs.append(f"{label}: output differs ({len(bad)} elements), first at query {i} "
                    f"element {j}: {got[i, j] if got.shape == ref.out.shape else got.shape} "
                    f"!= golden {ref.out[i, j]}")
    if any(any(x for x in row[d:]) for row in res["out"]):
        errs.append(f"{label}: output elements beyond d are not zero")
    if res["probs"] != ref.p.tolist():
        errs.append(f"{label}: probabilities differ from golden")
    if res["p_max"] != ref.p_max.tolist():
        errs.append(f"{label}: p_max {res['p_max'][:8]} != golden {ref.p_max.tolist()[:8]}")
    sm = golden.softmax(CFG, ref.dots, params)
    if res["max"] != sm.max.tolist() or res["esum"] != sm.esum.tolist():
        errs.append(f"{label}: row max/esum differ from golden")
    if res["queries"] != q.shape[0] or not res["done"] or res["busy"]:
        errs.append(f"{label}: status queries={res['queries']} done={res['done']} "
                    f"busy={res['busy']}")
    n = k.shape[0]
    g = M // d
    floor = q.shape[0] * -(-n // min(g, S))       # the Q.K array's own time, nothing overlapped
    if not floor < res["cycles"] < 50 * floor + 2000:
        errs.append(f"{label}: cycles {res['cycles']} outside ({floor}, {50 * floor + 2000})")
    kept = sum(len(x) for x in ref.kept)
    if res["macs"] != q.shape[0] * n * d + kept * d:
        errs.append(f"{label}: macs {res['macs']} != {q.shape[0] * n * d + kept * d}")
    return errs


def make_job(rng, n, d, m, *, k_v=None, renorm=False, kind="gauss", spread=1.5) -> dict:
    lo, hi = CFG.data_min, CFG.data_max
    if kind == "gauss":
        def qz(shape, s):
            x = rng.normal(size=shape) * s
            sc = float(np.abs(x).max()) / hi or 1.0
            return np.round(x / sc).astype(np.int64), sc
        q, qs = qz((m, d), spread)
        k, ks = qz((n, d), spread)
        v, _ = qz((n, d), 1.0)
        params = golden.score_params(CFG, qs, ks, d)
    elif kind == "extreme":
        q = rng.choice([lo, hi], (m, d))
        k = rng.choice([lo, hi], (n, d))
        v = rng.choice([lo, hi], (n, d))
        params = golden.score_params(CFG, 1e-3, 1e-3, d)
    elif kind == "equal":
        q = rng.integers(lo, hi + 1, (m, d))
        k = np.tile(rng.integers(lo, hi + 1, (1, d)), (n, 1))
        v = rng.integers(lo, hi + 1, (n, d))
        params = golden.score_params(CFG, 0.01, 0.01, d)
    elif kind == "dominant":
        q = np.full((m, d), hi)
        k = rng.integers(-4, 5, (n, d))
        k[n // 2] = hi
        v = rng.integers(lo, hi + 1, (n, d))
        params = golden.score_params(CFG, 0.01, 0.01, d)
    else:
        raise ValueError(kind)
    return {"q": q.tolist(), "k": k.tolist(), "v": v.tolist(), "n": n, "d": d,
            "params": [params.shift, params.scale, params.post_shift], "k_v": k_v,
            "renorm": renorm}


def edge_jobs(rng) -> list[tuple]:
    cap = CFG.capacity
    dmax = min(M, MV)
    dims = [x for x in (8, 16, 32, 64) if x <= dmax]
    jobs = [
        ("n=1", make_job(rng, 1, dims[0], 2)),
        ("n=S+1", make_job(rng, S + 1, dims[-1], 3)),
        ("n odd", make_job(rng, 2 * S + 3, dims[len(dims) // 2], 4)),
        ("capacity", make_job(rng, cap, dims[-1], 2)),
        ("capacity d=8", make_job(rng, cap, 8, 2)),
        ("all equal", make_job(rng, 3 * S + 1, dims[-1], 3, kind="equal")),
        ("dominant", make_job(rng, 4 * S, dims[-1], 3, kind="dominant")),
        ("extremes", make_job(rng, min(cap, 5 * S), dims[-1], 3, kind="extreme")),
        ("prune k_v=1", make_job(rng, min(cap, 6 * S), dims[0], 3, k_v=1)),
        ("prune n/4", make_job(rng, min(cap, 40), dims[-1], 4, k_v=10)),
        ("prune n/4 renorm", make_job(rng, min(cap, 40), dims[-1], 4, k_v=10, renorm=True)),
        ("prune n-1 renorm", make_job(rng, min(cap, 17), dims[0], 3, k_v=16, renorm=True)),
        ("renorm no prune", make_job(rng, min(cap, 19), dims[-1], 2, renorm=True)),
        ("capacity prune", make_job(rng, cap, dims[-1], 2, k_v=cap // 3, renorm=True)),
        ("upper bank", dict(make_job(rng, cap // 2, dims[-1], 3, k_v=cap // 5), bank=1)),
        ("upper bank d=8", dict(make_job(rng, cap // 2, 8, 2), bank=1)),
    ]
    return jobs


def random_jobs(rng, runs) -> list[tuple]:
    out = []
    dims = [x for x in (8, 16, 32, 64, 128) if x <= min(M, MV)]
    for r in range(runs):
        n = int(rng.integers(1, CFG.capacity + 1))
        d = int(rng.choice(dims))
        m = int(rng.integers(1, 6))
        k_v = None if r % 2 == 0 else int(rng.integers(1, n + 1))
        out.append((f"random#{r} n={n} d={d} m={m} k_v={k_v}",
                    make_job(rng, n, d, m, k_v=k_v, renorm=bool(r % 3 == 1),
                             spread=float(rng.choice([0.3, 1.5, 3.0])))))
    return out


async def run_and_check(bench, jobs) -> list[str]:
    errs = []
    for label, job in jobs:
        q = np.asarray(job["q"])
        res = await bench.run(job, timeout_for(job["n"], job["d"], q.shape[0]))
        errs += check(job, res, label)
    return errs


# ------------------------------------------------------------------------------ tests
@cocotb.test(skip=HAS_JOBS)
async def edge_cases(dut):
    """Every edge case of the contract, no gaps, no backpressure."""
    rng = np.random.default_rng(SEED)
    bench = await Bench.start(dut)
    errs = await run_and_check(bench, edge_jobs(rng))
    assert not errs, "\n".join(errs)


@cocotb.test(skip=HAS_JOBS)
async def random_stress(dut):
    """Seeded random runs under random input gaps and output backpressure."""
    rng = np.random.default_rng(SEED + 100)
    dut._log.info(f"seed {SEED}")
    bench = await Bench.start(dut, idle=0.3, stall=0.4, seed=SEED + 7)
    errs = await run_and_check(bench, random_jobs(rng, RANDOM_RUNS) + edge_jobs(rng)[5:9])
    assert not errs, "\n".join(errs)


@cocotb.test(skip=HAS_JOBS)
async def errors_then_good(dut):
    """Each bad run ends with one error beat and a status, and a good run follows."""
    rng = np.random.default_rng(SEED + 200)
    bench = await Bench.start(dut)
    good_label, good = edge_jobs(rng)[2]
    dmax = min(M, MV)
    bad_cases = [
        ("N_ZERO", dict(n=0)),
        ("N_OVER_CAPACITY", dict(n=CFG.capacity + 1)),
        ("BAD_HEAD_DIM", dict(d=4)),
        ("BAD_HEAD_DIM", dict(d=dmax * 2)),
        ("K_V_ZERO", dict(k_v=0)),
        ("BAD_BANK", dict(bank=1, n=CFG.capacity // 2 + 1)),
    ]
    errs = []
    for case in bad_cases:
        code, change = case
        job = dict(good, **change, k=None, v=None)
        res = await bench.run(job, 20000)
        if res["error"] != code or not res["error_beat"] or not res["error_flag"]:
            errs.append(f"{code}: got error {res['error']} beat={res['error_beat']}")
        if len(res["out"]) != 1:
            errs.append(f"{code}: {len(res['out'])} output beats, want one error beat")
        res = await bench.run(good, 20000)
        errs += check(good, res, f"good after {code}")
    # a load beyond the buffer: dropped, flagged
    if CFG.capacity < (1 << max(1, (CFG.capacity - 1).bit_length())):
        await bench.load.send([{"target": 0, "addr": CFG.capacity, "data": [0] * WORD}])
        await RisingEdge(dut.clk)
        await ReadOnly()
        if ErrorCode(int(dut.error_code.value)) != ErrorCode.BAD_LOAD:
            errs.append("a load beyond the buffer did not set BAD_LOAD")
        await RisingEdge(dut.clk)
        res = await bench.run(good, 20000)
        errs += check(good, res, "good after BAD_LOAD")
    assert not errs, "\n".join(errs)


@cocotb.test(skip=HAS_JOBS)
async def reset_mid_run(dut):
    """A reset in the middle of a run returns the pipeline to idle; the next run is exact."""
    rng = np.random.default_rng(SEED + 300)
    bench = await Bench.start(dut)
    job = make_job(rng, min(CFG.capacity, 50), min(M, MV), 4, k_v=7)
    await bench.load.send(load_beats(job["k"], job["v"]))
    bench.set_registers(job["n"], job["d"], job["k_v"], False, job["params"])
    bench.q.send_nowait(query_beats(np.asarray(job["q"])))
    await ClockCycles(dut.clk, 40)
    await bench.reset()
    bench = Bench(dut, seed=SEED + 9)
    res = await bench.run(job, timeout_for(job["n"], job["d"], 4))
    errs = check(job, res, "after reset")
    assert not errs, "\n".join(errs)


# ------------------------------------------------------------------------------ progressive
def pq_golden(job, tau, fill):
    """`golden.progressive.run_group` for a job (one head group, every query of head 0)."""
    from spatten.golden.dram_image import ImageLayout
    from spatten.golden.progressive import group_planes, run_group

    q, k, v = (np.asarray(job[x], dtype=np.int64) for x in ("q", "k", "v"))
    n, d = k.shape
    lay = ImageLayout.from_config(CFG, layers=1, kv_heads=1, q_heads=1, d=d, n_max=n,
                                  m_max=q.shape[0], msb_bits=RUN_MSB_BITS)
    return run_group(CFG, group_planes(lay, 0, 0), k, v, [q], list(range(n)),
                     [(0, j) for j in range(q.shape[0])], golden.ScoreParams(*job["params"]),
                     tau=tau, fill=fill, memory=MemoryConfig(msb_bits=RUN_MSB_BITS),
                     k_v=job.get("k_v"), renorm=job.get("renorm", False))


async def run_pq(bench, job, tau, fill, *, lsb_late=False):
    """One progressive-quantization run; returns the list of mismatches against the golden."""
    from spatten.golden.progressive import tau_fixed

    dut = bench.dut
    ref = pq_golden(job, tau, fill)
    q = np.asarray(job["q"], dtype=np.int64)
    m = q.shape[0]
    await bench.load.send(load_beats(job["k"], job["v"]))
    bench.set_registers(job["n"], job["d"], job.get("k_v"), job.get("renorm", False),
                        job["params"])
    dut.pq.value = 1
    dut.tau.value = tau_fixed(tau)
    dut.fill_mid.value = int(fill == "mid")
    dut.lsb_ready.value = int(not lsb_late)
    asked = []

    async def lsb_server():
        while True:
            await RisingEdge(dut.clk)
            if int(dut.lsb_needed.value):
                asked.append(1)
                await ClockCycles(dut.clk, 23)      # "fetching" the LSB plane
                dut.lsb_ready.value = 1
                return

    server = cocotb.start_soon(lsb_server()) if lsb_late else None
    bench.q.send_nowait(query_beats(q))
    timeout = 3 * timeout_for(job["n"], job["d"], m)
    outs = await with_timeout(bench.o.recv_packet(), dut, timeout)
    rows = [await with_timeout(bench.row.recv(), dut, timeout) for _ in ref.passes]
    probs = []
    for _ in range(m):
        packet = await with_timeout(bench.probs.recv_packet(), dut, timeout)
        probs.append([int(x) for b in packet for x in b["data"][:b["count"]]])
    await bench.q.wait_idle()
    await RisingEdge(dut.clk)
    await ReadOnly()
    refetched = int(dut.refetched.value)
    await RisingEdge(dut.clk)
    if server is not None:
        server.cancel()
    dut.pq.value = 0
    dut.lsb_ready.value = 1
    d = q.shape[1]
    errs = []
    tags = [int(b["tag"]) for b in outs]
    if tags != ref.order:
        errs.append(f"output order {tags} != golden {ref.order}")
    for b in outs:
        t = int(b["tag"])
        if t < m and [int(x) for x in b["data"][:d]] != ref.out[t].tolist():
            errs.append(f"output of query {t} differs")
    want_rows = ref.row_beats()
    got_rows = [(int(r["tag"]), int(r["full"]), int(r["refetch"])) for r in rows]
    if got_rows != want_rows:
        errs.append(f"row beats {got_rows} != golden {want_rows}")
    msb_pmax = [int(r["p_max"]) for r, (kind, _) in zip(rows, ref.passes, strict=True)
                if kind == "M"]
    if msb_pmax != ref.p_max_msb.tolist():
        errs.append("p_max of the MSB passes differs")
    if probs != ref.final_probs():
        errs.append("final probabilities differ")
    if refetched != int(ref.refetched.sum()):
        errs.append(f"refetched {refetched} != {int(ref.refetched.sum())}")
    if lsb_late and ref.refetched.any() and not asked:
        errs.append("lsb_needed never rose")
    return errs


@cocotb.test(skip=HAS_JOBS)
async def progressive(dut):
    """Progressive quantization: MSB passes, the tau trigger, full-precision passes, the
    pass order and tags, for tau = 0, a middle value and 1, both fills, with value pruning,
    with the LSB plane arriving late, under gaps and backpressure."""
    rng = np.random.default_rng(SEED + 400)
    dut._log.info(f"seed {SEED}")
    dims = [x for x in (8, 16, 32, 64) if x <= min(M, MV)]
    errs = []
    for stress in (False, True):
        bench = await Bench.start(dut, idle=0.3 * stress, stall=0.4 * stress,
                                  seed=SEED + 11)
        for r in range(3):
            n = int(rng.integers(S + 1, min(CFG.capacity, 60) + 1))
            d = int(dims[(r + stress) % len(dims)])
            m = int(rng.integers(3, 7))
            k_v = None if r == 0 else int(rng.integers(1, n + 1))
            job = make_job(rng, n, d, m, k_v=k_v, renorm=r == 2, spread=2.0)
            pm = pq_golden(job, 0.0, "mid").p_max_msb
            mid = float(np.median(pm)) / 65536 + 1e-6
            for tau, fill, late in ((0.0, "mid", False), (mid, "mid", r == 1),
                                    (1.0, "zero", r == 2), (mid, "zero", False)):
                label = f"stress={stress} n={n} d={d} m={m} k_v={k_v} tau={tau:.4f} {fill}"
                errs += [f"{label}: {e}" for e in await run_pq(bench, job, tau, fill,
                                                              lsb_late=late)]
    assert not errs, "\n".join(errs)


@cocotb.test(skip=not HAS_JOBS)
async def run_jobs(dut):
    """Job mode (`run_attention`): run the given jobs, write what the RTL produced."""
    bench = await Bench.start(dut, idle=_SETTINGS.get("idle", 0.0),
                              stall=_SETTINGS.get("stall", 0.0))
    results = []
    for job in _SETTINGS["jobs"]:
        q = np.asarray(job["q"])
        results.append(await bench.run(job, timeout_for(job["n"], job["d"], q.shape[0])))
    write_results(results)

