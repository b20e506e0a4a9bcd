"""The top-k engine (`hw/topk/topk.py`) in cocotb: its testbench, and the runs of its RTL that the
command line, the demo and the benchmarks use.

`topk_selftest(cfg, sim=, seed=)` runs the self-checking tests below (tests/test_topk.py);
`run_topk(cfg, jobs)` runs jobs ({"values": [...], "k": int, "mode": "exact"|"statistical"})
through the RTL and returns, per job, what the engine produced: selected indices and values,
threshold, cycle counters, status. Both go through `spatten.sim.infra.testbench` (settings: the
`TopKConfig` fields, ``seed``, ``random_runs``, or the ``jobs`` of job mode).

The bench (`spatten.sim.infra.bench.UnitBench`): driver `StreamSource` on ``i`` (random idle
cycles when asked), monitor `StreamSink` on ``o`` (random backpressure when asked; it also checks
the stream rules on every stalled beat). Transaction-level model: `spatten.golden.topk`
(selection, threshold, cycle model). Checker: in order, beat by beat, after every run; every
selected pair is compared, and with no gaps and no backpressure the cycle counters are compared
with the cycle model exactly.
"""

from __future__ import annotations

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from spatten.config import TopKConfig
from spatten.golden import topk as golden
from spatten.hw.topk.topk import ErrorCode, Mode, TopK, input_layout, output_layout

from ..infra.bench import UnitBench, report, tb_config
from ..infra.runner import CocotbResult
from ..infra.testbench import cfg_tag, run_testbench, run_testbench_jobs, write_results
from .unit_top import lane_beats

__all__ = ["run_topk", "topk_selftest", "TOPLEVEL"]

TOPLEVEL = "topk"


# ------------------------------------------------------------------------------ pytest side
def _tag(cfg: TopKConfig) -> str:
    """The build folder's tag: the main parameters, readable, and a hash of every field."""
    return f"p{cfg.lanes}w{cfg.value_width}c{cfg.capacity}d{cfg.digit_bits}-{cfg_tag(cfg)[:6]}"


def run_topk(cfg: TopKConfig, jobs: list[dict], *, sim: str = "verilator", idle: float = 0.0,
             stall: float = 0.0, purpose: str = "jobs") -> list[dict]:
    """Run `jobs` ({"values": [...], "k": int, "mode": "exact"|"statistical"}) through the RTL;
    return one dict per job (indices, values, threshold, select_cycles, total_cycles, error,
    ...)."""
    clean_jobs = [{"values": [int(x) for x in j["values"]], "k": int(j["k"]),
                   "mode": j.get("mode", "exact")} for j in jobs]
    return run_testbench_jobs(lambda: TopK(config=cfg), clean_jobs, name=TOPLEVEL,
                              tb_module=__name__, config=cfg, tag=_tag(cfg), sim=sim, idle=idle,
                              stall=stall, purpose=purpose)


def topk_selftest(cfg: TopKConfig, *, sim: str, seed: int, random_runs: int = 12,
                  testcase=None) -> CocotbResult:
    """Run the self-checking tests below; raises `CocotbFailure` when one fails."""
    return run_testbench(lambda: TopK(config=cfg), name=TOPLEVEL, tb_module=__name__,
                         config=cfg, tag=_tag(cfg), sim=sim, testcase=testcase,
                         settings={"seed": seed, "random_runs": random_runs})


# ------------------------------------------------------------------------------ cocotb side
CFG, SEED, _SETTINGS = tb_config(TopKConfig, random_runs=12)
RANDOM_RUNS = int(_SETTINGS["random_runs"])
HAS_JOBS = "jobs" in _SETTINGS
P = CFG.lanes
TIMEOUT_CYCLES = 40 * (CFG.capacity // CFG.lanes + 8) * CFG.digits + 2000


# ------------------------------------------------------------------------------ the driver side
def beats_of(values) -> list[dict]:
    """Input beats for a value array: P per beat, the last one partial."""
    return lane_beats(values, P)


class Bench(UnitBench):
    """The source and sink of one test; runs jobs through the engine."""

    INPUTS = {"i__valid": 0, "o__ready": 0, "k": 0, "mode": 0}
    RNG_OFFSETS = (11, 13)

    def __init__(self, dut, idle=0.0, stall=0.0, seed=SEED):
        super().__init__(dut, ("i", input_layout(CFG)), ("o", output_layout(CFG)), idle=idle,
                         stall=stall, seed=seed)

    async def run(self, beats, k, mode) -> dict:
        """Send one run's beats, collect its output packet and status."""
        dut = self.dut
        dut.k.value = int(k)
        dut.mode.value = mode.value if isinstance(mode, Mode) else int(mode)
        got = await self.exchange(beats, self.sink.recv_packet, 1, TIMEOUT_CYCLES)
        assert got, f"no output packet within {TIMEOUT_CYCLES} cycles (hang)"
        packet = got[0]
        await self.src.wait_idle()
        await RisingEdge(dut.clk)
        await ReadOnly()
        idx, vals = [], []
        for beat in packet:
            c = beat["count"]
            assert c <= P, f"output beat with count {c} > lanes"
            idx += [int(x) for x in beat["index"][:c]]
            vals += [int(x) for x in beat["value"][:c]]
        for beat in packet[:-1]:
            assert beat["count"] == P, f"a beat before the last is partial: {beat['count']}"
        res = {
            "indices": idx, "values": vals, "beats": len(packet),
            "threshold": dut.threshold.value.to_signed(),
            "select_cycles": int(dut.select_cycles.value),
            "total_cycles": int(dut.total_cycles.value),
            "error": ErrorCode(int(dut.error_code.value)).name,
            "error_flag": int(dut.error.value), "done": int(dut.done.value),
            "busy": int(dut.busy.value), "selected": int(dut.selected.value),
            "n": int(dut.n.value),
        }
        await RisingEdge(dut.clk)
        return res


# ------------------------------------------------------------------------------ the checker
def check(values, k, mode, res, *, cycles_exact: bool, label: str) -> list[str]:
    """Compare one run with the golden model; return the problems found."""
    values = np.asarray(values, dtype=np.int64)
    ref = (golden.select if mode == "exact" else golden.select_statistical)(CFG, values, k)
    errs = []
    if res["error"] != "NONE":
        errs.append(f"{label}: unexpected error {res['error']}")
    if res["indices"] != ref.indices.tolist():
        errs.append(f"{label}: indices {res['indices'][:20]}... != golden "
                    f"{ref.indices.tolist()[:20]}... ({len(res['indices'])} vs {ref.indices.size})")
    elif res["values"] != values[ref.indices].tolist():
        errs.append(f"{label}: values differ from the input at the selected indices")
    if res["threshold"] != ref.threshold:
        errs.append(f"{label}: threshold {res['threshold']} != golden {ref.threshold}")
    if res["selected"] != ref.indices.size or res["n"] != values.size:
        errs.append(f"{label}: status selected={res['selected']} n={res['n']}")
    if not res["done"] or res["busy"] or res["error_flag"]:
        errs.append(f"{label}: status done={res['done']} busy={res['busy']}")
    if res["beats"] != max(1, -(-ref.indices.size // P)):
        errs.append(f"{label}: {res['beats']} output beats for {ref.indices.size} values")
    model = golden.cycle_model(CFG, values, k, mode)
    if cycles_exact:
        if (res["select_cycles"], res["total_cycles"]) != (model["select"], model["total"]):
            errs.append(f"{label}: cycles select {res['select_cycles']} total "
                        f"{res['total_cycles']} != model {model['select']} {model['total']}")
    elif res["total_cycles"] < model["total"]:
        errs.append(f"{label}: total {res['total_cycles']} below the stall-free model "
                    f"{model['total']}")
    return errs


def edge_cases(rng: np.random.Generator) -> list[tuple]:
    """(label, values, k, mode) for the edge cases of the contract."""
    lo, hi, cap = CFG.value_min, CFG.value_max, CFG.capacity
    n = min(cap, 4 * P + 3)
    ramp = np.arange(n) % (hi - lo + 1) + lo
    cases = [
        ("n=1 k=1", [5 % hi], 1),
        ("n=1 k=0", [lo], 0),
        ("all equal", [7 % hi] * n, n // 3),
        ("all equal k=n", [-1] * n, n),
        ("ascending", np.sort(rng.integers(lo, hi + 1, n)), n // 2),
        ("descending", np.sort(rng.integers(lo, hi + 1, n))[::-1], n // 2),
        ("duplicates", rng.integers(-2, 3, n), n // 2),
        ("extremes", rng.choice([lo, hi], n), n // 2),
        ("extremes k=1", rng.choice([lo, hi, lo + 1, hi - 1], n), 1),
        ("all min", [lo] * n, 1),
        ("all max", [hi] * n, n - 1),
        ("n%P!=0", rng.integers(lo, hi + 1, P + 1), 2),
        ("k=0", rng.integers(lo, hi + 1, n), 0),
        ("k=1", rng.integers(lo, hi + 1, n), 1),
        ("k=n", rng.integers(lo, hi + 1, n), n),
        ("capacity", rng.integers(lo, hi + 1, cap), cap // 4),
        ("capacity dup", rng.integers(-3, 4, cap), cap // 2),
        ("ramp", ramp, n // 4),
    ]
    return [(label, np.asarray(v, dtype=np.int64), int(k), "exact") for label, v, k in cases]


def random_cases(rng: np.random.Generator, runs: int, mode="exact") -> list[tuple]:
    lo, hi = CFG.value_min, CFG.value_max
    out = []
    for r in range(runs):
        n = int(rng.integers(1, CFG.capacity + 1))
        k = int(rng.integers(0, n + 1))
        kind = r % 3
        if kind == 0:
            v = rng.integers(lo, hi + 1, n)
        elif kind == 1:                 # narrow spread: many ties
            v = rng.integers(max(lo, -8), min(hi, 8) + 1, n)
        else:                           # normal-ish, clipped
            v = np.clip(np.round(rng.normal(0, (hi - lo) / 16, n)), lo, hi).astype(np.int64)
        out.append((f"random#{r} n={n} k={k}", v, k, mode))
    return out


async def run_cases(dut, bench, cases, *, cycles_exact) -> list[str]:
    errs = []
    for label, v, k, mode in cases:
        res = await bench.run(beats_of(v), k, Mode.EXACT if mode == "exact" else Mode.STATISTICAL)
        errs += check(v, k, mode, res, cycles_exact=cycles_exact, label=label)
    return errs


# ------------------------------------------------------------------------------ self-checking
@cocotb.test(skip=HAS_JOBS)
async def test_edge_cases(dut):
    """Every edge case of the contract, back to back, cycle counts exact."""
    bench = await Bench.start(dut)
    cases = edge_cases(np.random.default_rng(SEED))
    report(dut, SEED, await run_cases(dut, bench, cases, cycles_exact=True),
            f"{len(cases)} edge cases")


@cocotb.test(skip=HAS_JOBS)
async def test_random(dut):
    """Seeded random inputs (uniform, many ties, normal), cycle counts exact."""
    bench = await Bench.start(dut)
    cases = random_cases(np.random.default_rng(SEED + 1), RANDOM_RUNS)
    report(dut, SEED, await run_cases(dut, bench, cases, cycles_exact=True),
            f"{len(cases)} random runs")


@cocotb.test(skip=HAS_JOBS)
async def test_gaps_and_backpressure(dut):
    """Edge cases and random inputs with random input gaps and output backpressure."""
    bench = await Bench.start(dut, idle=0.3, stall=0.4, seed=SEED + 2)
    rng = np.random.default_rng(SEED + 2)
    cases = edge_cases(rng)[::2] + random_cases(rng, max(4, RANDOM_RUNS // 2))
    errs = await run_cases(dut, bench, cases, cycles_exact=False)
    bench.retune(0.0, 0.7)
    errs += await run_cases(dut, bench, random_cases(rng, 3), cycles_exact=False)
    assert bench.src.idle_cycles > 0 and bench.sink.stall_cycles > 0, "no gap or stall happened"
    report(dut, SEED, errs, f"{len(cases) + 3} runs under gaps and backpressure")


@cocotb.test(skip=HAS_JOBS)
async def test_statistical(dut):
    """The statistical mode, bit-exact against the golden model (cycle counts exact too)."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED + 3)
    cases = [(lbl, v, k, "statistical") for lbl, v, k, _ in edge_cases(rng)[::3]]
    cases += random_cases(rng, max(4, RANDOM_RUNS // 2), mode="statistical")
    errs = await run_cases(dut, bench, cases, cycles_exact=True)
    bench.retune(0.3, 0.3)
    errs += await run_cases(dut, bench, random_cases(rng, 3, mode="statistical"),
                            cycles_exact=False)
    report(dut, SEED, errs, f"{len(cases) + 3} statistical runs")


def _bad_runs(rng):
    lo, hi, cap = CFG.value_min, CFG.value_max, CFG.capacity
    v = rng.integers(lo, hi + 1, 2 * P + 1)
    over = beats_of(rng.integers(lo, hi + 1, cap + P))
    partial_mid = beats_of(v)
    if len(partial_mid) > 1 and P > 1:
        partial_mid[0] = dict(partial_mid[0], count=P - 1)
    else:
        partial_mid = [dict(partial_mid[0], count=0, last=0)] + partial_mid
    zero_mid = beats_of(v)
    zero_mid.insert(0, {"data": [0] * P, "count": 0, "last": 0})
    return [
        ("k > n", beats_of(v), v.size + 1, Mode.EXACT, "K_OVER_N"),
        ("n = 0", [{"data": [0] * P, "count": 0, "last": 1}], 0, Mode.EXACT, "N_ZERO"),
        ("n over capacity", over, 1, Mode.EXACT, "N_OVER_CAPACITY"),
        ("partial beat mid-run", partial_mid, 1, Mode.EXACT, "BAD_BEAT"),
        ("empty beat mid-run", zero_mid, 1, Mode.EXACT, "BAD_BEAT"),
        ("unknown mode", beats_of(v), 1, 2, "BAD_MODE"),
        ("unknown mode 3", beats_of(v), 1, 3, "BAD_MODE"),
        ("statistical k > n", beats_of(v), v.size + 5, Mode.STATISTICAL, "K_OVER_N"),
    ]


@cocotb.test(skip=HAS_JOBS)
async def test_errors(dut):
    """Bad input: an error code, one empty packet, no hang; the next good run is exact."""
    bench = await Bench.start(dut, idle=0.2, stall=0.2, seed=SEED + 4)
    rng = np.random.default_rng(SEED + 4)
    errs = []
    for label, beats, k, mode, want in _bad_runs(rng):
        res = await bench.run(beats, k, mode)
        if res["error"] != want or not res["error_flag"] or not res["done"]:
            errs.append(f"{label}: error {res['error']} (flag {res['error_flag']}), want {want}")
        if res["indices"] or res["beats"] != 1:
            errs.append(f"{label}: {res['beats']} beats, {len(res['indices'])} values")
        label2, v, k2, _ = random_cases(rng, 1)[0]
        res = await bench.run(beats_of(v), k2, Mode.EXACT)
        errs += check(v, k2, "exact", res, cycles_exact=False, label=f"after {label}: {label2}")
    report(dut, SEED, errs, "error cases, each followed by a good run")


@cocotb.test(skip=HAS_JOBS)
async def test_reset_mid_run(dut):
    """A reset in every phase of a run (input, selection, output) returns the engine to idle;
    the run after it is exact and its cycle counts match the model."""
    bench = await Bench.start(dut)
    rng = np.random.default_rng(SEED + 5)
    errs = []
    n = CFG.capacity
    v = rng.integers(CFG.value_min, CFG.value_max + 1, n)
    model = golden.cycle_model(CFG, v, n // 3)
    beats_in = -(-n // P)
    for when in (beats_in // 2, beats_in + model["select"] // 2, model["total"] - 2):
        bench.stop()
        bench = Bench(dut, seed=SEED + when)
        dut.k.value = n // 3
        bench.src.send_nowait(beats_of(v))
        await ClockCycles(dut.clk, max(1, when))
        await bench.reset()
        await ReadOnly()
        if int(dut.busy.value) or int(dut.o__valid.value) or int(dut.done.value):
            errs.append(f"reset at cycle {when}: not idle after reset")
        await RisingEdge(dut.clk)
        bench = Bench(dut, seed=SEED + when + 1)
        res = await bench.run(beats_of(v), n // 3, Mode.EXACT)
        errs += check(v, n // 3, "exact", res, cycles_exact=True, label=f"after reset @{when}")
    report(dut, SEED, errs, "resets in the input, selection and output phases")


# ------------------------------------------------------------------------------ job runner
@cocotb.test(skip=not HAS_JOBS)
async def run_jobs(dut):
    """Run the jobs of the settings file and write their results (for the command line and
    the benchmarks); checks nothing itself."""
    bench = await Bench.start(dut, idle=float(_SETTINGS.get("idle", 0.0)),
                              stall=float(_SETTINGS.get("stall", 0.0)))
    results = []
    for job in _SETTINGS["jobs"]:
        mode = Mode.EXACT if job.get("mode", "exact") == "exact" else Mode.STATISTICAL
        results.append(await bench.run(beats_of(job["values"]), job["k"], mode))
    write_results(results)
