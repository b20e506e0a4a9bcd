# amaranth: UnusedElaboratable=no
"""The prob x V array (`hw/attention/pv.py`) against `golden.attention.pv` and `golden.pv_cycles`.

Amaranth-simulator tests drive `sim.tb_pv.PvTop` (the array with its V buffer) cycle by cycle:
every d of a small and of the default config with dense, sparse, contiguous, single, empty and
all-zero kept lists, with and without renorm; extreme values (p = 65535 on every row the buffer
holds, v at its minimum or maximum: the accumulator's full width and the output saturation);
back-to-back queries with every query's cycles equal to the model; random input gaps and output
backpressure; configuration variants; bad configurations; the ECP5 netlist (multipliers with
their own registers, per-lane control copies). cocotb runs (Verilator: small and
default config; Icarus: small) repeat the checks through the ``load`` port (`tb_pv.py`).
Set SPATTEN_SEED to fix the seed of the random tests.
"""

import random
import re
import time

import numpy as np
import pytest
from amaranth.hdl import Shape, signed, unsigned

from spatten.config import AttentionConfig, preset
from spatten.golden.pv_cycles import pv_beat_ops, pv_cycle_model, pv_schedule
from spatten.hw.attention.pv import ProbV, input_layout, output_layout, pv_latency, v_depth
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import cfg_tag, run_testbench
from spatten.sim.testbenches.tb_pv import PvTop, expected_beat, make_query, query_beats, v_words
from spatten.sim.testbenches.unit_top import random_elements

SMALL = AttentionConfig(pv_mults=16, qk_mults=16, capacity=64)
DEFAULT = AttentionConfig()
VARIANTS = {
    "preset-small": preset("small").attention,                              # Mv=8, S=1
    "mv32-s16": AttentionConfig(pv_mults=32, qk_mults=32, capacity=64, softmax_lanes=16),
    "mv16-s2-cap48": AttentionConfig(pv_mults=16, qk_mults=16, capacity=48, softmax_lanes=2,
                                     topk_lanes=2),                         # depth 24, not 2**k
    "mv8-s8-f0": AttentionConfig(pv_mults=8, qk_mults=8, capacity=32, softmax_lanes=8,
                                 out_frac_bits=0),
    "w8-f8": AttentionConfig(pv_mults=16, qk_mults=16, capacity=32, data_width=8,
                             out_frac_bits=8),
}
KINDS = ("dense", "sparse", "contiguous", "single", "empty", "zero", "softmaxish")


def rows_of(cfg, d):
    """V rows of dimension d the buffer holds (capacity words of Mv elements: every d)."""
    return cfg.capacity


def random_flat(cfg, rng, kind="uniform"):
    return random_elements(cfg, rng, v_depth(cfg) * cfg.pv_mults, kind)


# ---------------------------------------------------------------------------------------------
# Cycle-by-cycle harness


def run_pv(cfg, flat, queries, *, seed=0, gap=0.0, stall=0.0, junk=True, patch=None, quiet=3,
           max_cycles=None, p_sum_bits=None):
    """Simulate `PvTop` with the V buffer holding `flat` and offer the beats of `queries`
    ((kept, probs, d, renorm) each; fields of `patch` overwritten in every beat) on ``i`` (idle
    with probability `gap` before each beat); ``o.ready`` is low with probability `stall`.
    Checks the stream rules of ``o`` every cycle, every output beat against the golden model,
    that nothing more comes out in `quiet` cycles, that ``busy`` falls, and the ``macs``
    counter. Returns the output beats (with their cycle stamps)."""
    rng = random.Random(seed)
    top = PvTop(cfg, init=v_words(cfg, flat), p_sum_bits=p_sum_bits)
    beats = []
    for q in queries:
        beats += [dict(b, **(patch or {})) for b in query_beats(cfg, *q, rng=rng if junk else None)]
    work = sum(len(b["index"]) for b in beats) + 40 * len(queries) + sum(q[2] for q in queries)
    info = {}

    async def finish(ctx):
        assert not ctx.get(top.busy), "busy after the last output"
        info["macs"] = ctx.get(top.macs)
        info["overflow"] = ctx.get(top.pv.overflow)

    res = run_streams(top, sources={"i": beats}, sinks={"o": len(queries)}, rng=rng, gap=gap,
                      stall=stall, quiet=quiet, finish=finish,
                      max_cycles=max_cycles or int(200 + 2 * work * (1 + 10 * max(gap, stall))))
    outs = res["beats"]["o"]
    for k, (out, q) in enumerate(zip(outs, queries, strict=True)):
        got, want = {"data": out["data"], "psum": out["psum"]}, expected_beat(cfg, flat, q)
        assert got == want, (f"query {k} (d={q[2]}, renorm={q[3]}, {len(q[0])} kept) in cycle "
                             f"{res['seen']['o'][k]}:\n got  {got}\n want {want}")
    macs = sum(len(q[0]) * q[2] for q in queries) % (1 << 32)
    assert info["macs"] == macs, f"macs {info['macs']} != {macs}"
    big = p_sum_bits is not None and any(sum(q[1]) >= 1 << p_sum_bits for q in queries)
    assert info["overflow"] == big, f"overflow {info['overflow']}, expected {big}"
    return outs


def check_cycles(cfg, queries, outs):
    """Every query's (first-beat, output) cycles, relative to the first transfer, equal the
    model's."""
    model = pv_schedule(cfg, [(q[0], q[2], q[3]) for q in queries])
    t0 = outs[0]["t_in"]
    have = [(o["t_in"] - t0, o["t_out"] - t0) for o in outs]
    want = [(r["in"], r["out"]) for r in model]
    for k, (h, w) in enumerate(zip(have, want, strict=True)):
        assert h == w, (f"query {k} (d={queries[k][2]} renorm={queries[k][3]} "
                        f"{len(queries[k][0])} kept): (in, out) cycles {h} != model {w}")


def kind_queries(cfg, rng, d, n, kinds=KINDS):
    return [make_query(cfg, rng, d, n, kind, renorm) for kind in kinds for renorm in (False, True)]


def random_queries(cfg, rng, count, kinds):
    """`count` queries of random d, n, kind (from `kinds`) and renorm."""
    queries = []
    for _ in range(count):
        d = int(rng.choice(cfg.head_dims))
        n = int(rng.integers(1, rows_of(cfg, d) + 1))
        kind = str(rng.choice(kinds))
        queries.append(make_query(cfg, rng, d, n, kind, bool(rng.integers(0, 2))))
    return queries


# ---------------------------------------------------------------------------------------------
# Function and cycles


@pytest.mark.parametrize("d", SMALL.head_dims)
def test_every_kind_small(d, seed):
    """Dense, sparse, contiguous, single, empty, all-zero and softmax-like kept lists with and
    without renorm, back to back; cycles exact."""
    rng = np.random.default_rng(seed)
    flat = random_flat(SMALL, rng)
    queries = kind_queries(SMALL, rng, d, rows_of(SMALL, d))
    outs = run_pv(SMALL, flat, queries, seed=seed)
    check_cycles(SMALL, queries, outs)


def test_every_d_default(seed):
    """The default config (Mv = 64, S = 4): every d, the kinds of kept lists on 48 rows, d
    changing from query to query; cycles exact."""
    rng = np.random.default_rng(seed)
    flat = random_flat(DEFAULT, rng, "mixed")
    queries = []
    for d in DEFAULT.head_dims:
        queries += kind_queries(DEFAULT, rng, d, 48, ("dense", "sparse", "single", "empty"))
    outs = run_pv(DEFAULT, flat, queries, seed=seed)
    check_cycles(DEFAULT, queries, outs)


@pytest.mark.parametrize("vkind", ["min", "max", "mixed"])
def test_extremes_small(vkind, seed):
    """p = 65535 on all capacity rows at d = 8 (the accumulator's full range) and at d = Mv;
    v at its minimum / maximum (the output saturates without renorm, is v with it)."""
    rng = np.random.default_rng(seed)
    flat = random_flat(SMALL, rng, vkind)
    queries = []
    for d in (SMALL.head_dims[0], SMALL.head_dims[-1]):
        for renorm in (False, True):
            queries.append(make_query(SMALL, rng, d, rows_of(SMALL, d), "max", renorm))
    outs = run_pv(SMALL, flat, queries, seed=seed)
    check_cycles(SMALL, queries, outs)
    if vkind in ("min", "max"):
        sat = SMALL.out_min if vkind == "min" else SMALL.out_max
        exact = int(flat[0]) << SMALL.out_frac_bits
        assert outs[0]["data"][:8] == [sat] * 8                      # saturated
        assert all(abs(x - exact) <= 1 for x in outs[1]["data"][:8])  # renormalised: v


def test_extremes_default_capacity():
    """Default config, d = 8: all 1024 rows kept at p = 65535 with v = min (acc = -2**37 + ...,
    the accumulator's full width), with and without renorm."""
    cfg = DEFAULT
    flat = random_flat(cfg, None, "min")
    rng = np.random.default_rng(0)
    queries = [make_query(cfg, rng, 8, cfg.capacity, "max", renorm) for renorm in (False, True)]
    want = expected_beat(cfg, flat, queries[0])
    assert want["psum"] == cfg.capacity * 65535
    outs = run_pv(cfg, flat, queries, junk=False)
    check_cycles(cfg, queries, outs)


def test_psum_zero_and_empty():
    """renorm with a zero probability sum (kept rows at p = 0, and nothing kept) gives 0."""
    rng = np.random.default_rng(1)
    flat = random_flat(SMALL, rng)
    queries = [make_query(SMALL, rng, d, rows_of(SMALL, d), kind, True)
               for d in SMALL.head_dims for kind in ("zero", "empty")]
    queries += [make_query(SMALL, rng, 8, 8, "empty", False)]
    outs = run_pv(SMALL, flat, queries)
    for o in outs:
        assert o["psum"] == 0 and not any(o["data"])
    check_cycles(SMALL, queries, outs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_variants(name, seed):
    """Mv = 8 with S = 1 (the small preset), S = 16 (gv <= S), S = 2 with a buffer depth that
    is not a power of two, out_frac_bits 0 and 8, W = 8; random kinds, cycles exact."""
    cfg = VARIANTS[name]
    rng = np.random.default_rng(seed)
    flat = random_flat(cfg, rng, "mixed" if seed % 2 else "uniform")
    queries = []
    for d in cfg.head_dims:
        kinds = [str(k) for k in rng.choice(KINDS, 3, replace=False)] + ["dense"]
        queries += kind_queries(cfg, rng, d, rows_of(cfg, d), kinds)
    queries.append(make_query(cfg, rng, 8, rows_of(cfg, 8), "max", False))
    outs = run_pv(cfg, flat, queries, seed=seed)
    check_cycles(cfg, queries, outs)


def test_random_back_to_back(seed):
    """Seeded random queries (d, kind, size, renorm random per query), back to back."""
    rng = np.random.default_rng(seed)
    flat = random_flat(SMALL, rng)
    queries = random_queries(SMALL, rng, 30, ["dense", "sparse", "sparse", "contiguous", "single",
                                              "empty"])
    outs = run_pv(SMALL, flat, queries, seed=seed)
    check_cycles(SMALL, queries, outs)


@pytest.mark.parametrize("gap,stall", [(0.3, 0.0), (0.0, 0.6), (0.4, 0.4), (0.0, 0.9)])
def test_gaps_and_backpressure(gap, stall, seed):
    """Random idle cycles on ``i`` and backpressure on ``o``: nothing lost, duplicated or
    changed; the stream rules hold; outputs never earlier than the unstalled model."""
    rng = np.random.default_rng(seed)
    flat = random_flat(SMALL, rng)
    queries = random_queries(SMALL, rng, 16, ["dense", "sparse", "contiguous", "single", "empty"])
    outs = run_pv(SMALL, flat, queries, seed=seed, gap=gap, stall=stall)
    model = pv_schedule(SMALL, [(q[0], q[2], q[3]) for q in queries])
    t0 = outs[0]["t_in"]
    assert all(o["t_out"] - t0 >= r["out"] for o, r in zip(outs, model, strict=True))


def test_d_log2_clamped():
    """d_log2 below 3 is taken as 3 (d = 8)."""
    rng = np.random.default_rng(5)
    flat = random_flat(SMALL, rng)
    q = make_query(SMALL, rng, 8, 20, "sparse", False)
    outs = run_pv(SMALL, flat, [q], junk=False, patch={"d_log2": 1}, quiet=40)
    assert [o["data"] for o in outs] == [expected_beat(SMALL, flat, q)["data"]]


# ---------------------------------------------------------------------------------------------
# The cycle model itself


def test_cycle_model():
    cfg = DEFAULT
    for d in cfg.head_dims:
        gv = cfg.pv_mults // d
        n = rows_of(cfg, d)
        dense = pv_cycle_model(cfg, list(range(n)), d)
        # dense: ceil(n / min(gv, S)) words, one a cycle, no bubble between queries
        assert dense["ops"] == -(-n // min(gv, cfg.softmax_lanes))
        assert dense["period"] == dense["ops"] + 1          # the issue stage empties
        assert dense["latency"] == pv_latency(cfg, d) + dense["ops"] - 1
        rn = pv_cycle_model(cfg, list(range(n)), d, True)
        assert rn["latency"] == pv_latency(cfg, d, True) + rn["ops"] - 1
        assert rn["period"] == max(rn["ops"] + 1, d + cfg.pv_recip_ready - cfg.pv_grant_lookahead)
        one = pv_cycle_model(cfg, [3], d)
        assert one["latency"] == pv_latency(cfg, d) and one["ops"] == 1
        assert one["period"] <= 5                    # a couple of cycles over the one word
    # no pruning at gv <= S: n*d/Mv cycles
    assert pv_cycle_model(cfg, list(range(128)), 64)["ops"] == 128
    assert pv_cycle_model(cfg, list(range(512)), 16)["ops"] == 512 * 16 // 64
    # runs: a beat of 4 indices in 2 words of gv = 8 rows takes 2 cycles
    assert pv_beat_ops(cfg, [0, 7, 8, 100], 8) == [3]
    assert pv_beat_ops(cfg, [], 8) == [1]
    with pytest.raises(ValueError):
        pv_beat_ops(cfg, [3, 3], 8)
    with pytest.raises(ValueError):
        pv_beat_ops(cfg, [0], 12)
    with pytest.raises(ValueError):
        pv_beat_ops(cfg, [cfg.capacity], 16)
    # renorm costs d + pv_recip_ready + pv_lane_depth - 4 - log2(gv) cycles of latency (d + 25 -
    # log2(gv) at Mv = 64) over the plain query
    for d in cfg.head_dims:
        extra = pv_latency(cfg, d, True) - pv_latency(cfg, d)
        log_gv = (cfg.pv_mults // d).bit_length() - 1
        assert extra == d + cfg.pv_recip_ready + cfg.pv_lane_depth - 4 - log_gv


def test_ports_and_sizes():
    cfg = DEFAULT
    pv = ProbV(config=cfg)
    sig = pv.signature.members
    assert sig["i"].signature.members["payload"].shape == input_layout(cfg)
    assert sig["o"].signature.members["payload"].shape == output_layout(cfg)
    lay = input_layout(cfg)
    assert Shape.cast(lay["index"].shape.elem_shape) == unsigned(cfg.index_width)
    assert lay["index"].shape.length == cfg.softmax_lanes
    assert Shape.cast(output_layout(cfg)["data"].shape.elem_shape) == signed(cfg.out_width)
    assert Shape.cast(output_layout(cfg)["psum"].shape) == unsigned(cfg.psum_width)
    rd = sig["v_rd"].signature.members
    assert Shape.cast(rd["addr"].shape) == unsigned(10)        # capacity words
    assert v_depth(cfg) == 1024 and pv.depth == 1024
    assert Shape.cast(sig["d_log2"].shape) == unsigned(3)
    assert Shape.cast(sig["macs"].shape) == unsigned(32)


def test_ecp5_netlist():
    """On an ECP5 platform each multiplier is a MULT18X18D instance with its own input and
    output registers (the lane's A register enabled by the V read), and the per-lane control
    copies are TRELLIS_FF instances; elsewhere no instance (the simulated netlist)."""
    from amaranth.back import rtlil

    class Ecp5:
        family = "ecp5"

    cfg = DEFAULT
    text = rtlil.convert(ProbV(config=cfg), platform=Ecp5())
    dsps = [blk for blk in re.split(r"\n\s*cell ", text) if blk.startswith("\\MULT18X18D")]
    assert len(dsps) == cfg.pv_mults + 3                        # lanes + 3 of the reciprocal
    for blk in dsps:
        for reg in ("INPUTA", "INPUTB", "OUTPUT"):
            assert f'parameter \\REG_{reg}_CLK "CLK0"' in blk
    assert len(re.findall(r"cell \\TRELLIS_FF ", text)) >= 4 * cfg.pv_mults
    plain = rtlil.convert(ProbV(config=cfg))
    assert "MULT18X18D" not in plain and "TRELLIS_FF" not in plain


@pytest.mark.parametrize("args,kwargs,exc,msg", [
    ((), {"config": preset("default")}, TypeError, "AttentionConfig"),
    ((), {"config": None}, TypeError, "AttentionConfig"),
    ((SMALL,), {}, TypeError, "positional"),
    ((), {}, TypeError, "config"),
])
def test_bad_config(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        ProbV(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# cocotb on Verilator


@pytest.mark.parametrize("name,cfg,runs,sim", [("small", SMALL, 6, "verilator"),
                                              ("default", DEFAULT, 3, "verilator"),
                                              ("small", SMALL, 3, "icarus")],
                         ids=["small-verilator", "default-verilator", "small-icarus"])
def test_cocotb(name, cfg, runs, sim, seed):
    """The cocotb testbench (`tb_pv.py`) through the ``load`` port; Icarus (4-state) also
    checks that no unknown value reaches an output after reset."""
    from spatten.sim.infra.runner import simulator_missing

    missing = simulator_missing(sim)
    if missing:
        pytest.skip(missing)
    t = time.time()
    res = run_testbench(lambda: PvTop(cfg), name="pv", tag=f"{name}-{cfg_tag(cfg)}",
                        tb_module="spatten.sim.testbenches.tb_pv", sim=sim, config=cfg,
                        settings={"seed": seed % (1 << 31), "runs": runs})
    print(f"{name} on {sim}: {res.summary()} in {time.time() - t:.1f} s (built: {res.built}, "
          f"{res.build_seconds:.1f} s)")
    assert res.failed == 0 and res.passed == 4, res.summary()


@pytest.mark.parametrize("renorm", [False, True])
def test_narrow_accumulators(renorm, seed):
    """With ``p_sum_bits`` (the pipeline's 17) the accumulators are W + 18 bits: bit-exact for
    queries whose kept probabilities sum below 2**17, among them the extremes (every V element
    at the format's minimum or maximum, probabilities up to the bound) and softmax-like rows;
    cycle-exact as the full-width unit; ``overflow`` stays low, and rises for a query beyond the
    bound."""
    print("seed", seed)
    rng = np.random.default_rng(seed)
    cfg = DEFAULT
    bits = cfg.prob_bits + 1
    queries = []
    for d in (8, 32, 64):
        for kind in ("softmaxish", "sparse", "max"):
            kept, probs, _, _ = make_query(cfg, rng, d, rows_of(cfg, d), kind, renorm)
            scale = ((1 << bits) - 1) / max(1, sum(probs))
            probs = [int(p * scale) if sum(probs) >= 1 << bits else p for p in probs]
            assert sum(probs) < 1 << bits
            queries.append((kept, probs, d, renorm))
    for fill in (cfg.data_min, cfg.data_max):
        flat = np.full(v_depth(cfg) * cfg.pv_mults, fill)
        outs = run_pv(cfg, flat, queries, seed=seed, p_sum_bits=bits)
        check_cycles(cfg, queries, outs)
    flat = random_flat(cfg, rng)
    run_pv(cfg, flat, queries, seed=seed, p_sum_bits=bits)
    over = [(list(range(3)), [65535, 65535, 2], 8, renorm)]           # 2**17 exactly
    run_pv(cfg, flat, queries[:1] + over, seed=seed, p_sum_bits=bits, quiet=0)


def test_bad_p_sum_bits():
    for bad in (15, 27, 17.0, True, "17"):
        with pytest.raises(ValueError, match="p_sum_bits must be an int from 16 to 26"):
            ProbV(config=DEFAULT, p_sum_bits=bad)


def test_reciprocal_idle_when_started(seed):
    """A renormalised query's last word starts the reciprocal unit only when it is idle (the
    grant sees to it: the previous such query's lane has started by then); renormalised
    queries back to back, with output backpressure."""
    rng = np.random.default_rng(seed)
    flat = random_flat(SMALL, rng)
    queries = [make_query(SMALL, rng, int(rng.choice(SMALL.head_dims)), int(rng.integers(1, 9)),
                          str(rng.choice(["dense", "sparse", "single"])), True)
               for _ in range(16)]
    top = PvTop(SMALL, init=v_words(SMALL, flat))
    started = []

    def watch(ctx, cycle):
        recip = top.pv.reciprocal             # (the unit as elaborated)
        if ctx.get(recip.i.valid):
            assert ctx.get(recip.i.ready), f"cycle {cycle}: the reciprocal is busy"
            started.append(cycle)

    beats = [b for q in queries for b in query_beats(SMALL, *q, rng=None)]
    res = run_streams(top, sources={"i": beats}, sinks={"o": len(queries)}, stall=0.3,
                      rng=random.Random(seed), watch=watch, max_cycles=20_000)
    assert len(started) == len(queries)
    for out, q in zip(res["beats"]["o"], queries, strict=True):
        assert {"data": out["data"], "psum": out["psum"]} == expected_beat(SMALL, flat, q)
