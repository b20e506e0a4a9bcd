# amaranth: UnusedElaboratable=no
"""The fold register and the output register of prob x V (`hw/attention/pv_fold.py`,
`hw/attention/pv_output.py`), together (the output register's controls are the fold register's):
queries of every d, with and without renorm, arriving as early as F allows, a model of the
renormalisation lane (results of the test's choosing) and of the reciprocal (ready after a
random delay), random backpressure on ``o``. Checked: every beat (folded and rounded columns,
or the lane's results, zeros above d, psum) in order; the columns the lane reads; F's hand-over
in exactly the first cycle the contract allows. Set SPATTEN_SEED to fix the seed."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out

from spatten.config import AttentionConfig
from spatten.hw.attention.pv_common import output_layout
from spatten.hw.attention.pv_fold import FoldRegister
from spatten.hw.attention.pv_output import OutputRegister
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import pick_seed

CONFIGS = {
    "small": (AttentionConfig(pv_mults=16, qk_mults=16, capacity=64), None),
    "default-p17": (AttentionConfig(), 17),
    "mv8": (AttentionConfig(pv_mults=8, qk_mults=8, capacity=32, softmax_lanes=8), None),
    "mv32-f0": (AttentionConfig(pv_mults=32, qk_mults=32, capacity=64, out_frac_bits=0), None),
}


class FoldAndOutput(wiring.Component):
    """`FoldRegister` feeding `OutputRegister` as in `hw.attention.pv.ProbV`; the fold register's
    inputs and the output register's lane inputs are left to the testbench."""

    def __init__(self, cfg, p_sum_bits):
        self.fold = FoldRegister(config=cfg, p_sum_bits=p_sum_bits)
        self.out = OutputRegister(config=cfg, p_sum_bits=p_sum_bits)
        super().__init__({"o": Out(stream.Signature(output_layout(cfg)))})

    def elaborate(self, platform):
        m = Module()
        fold, out = m.submodules.fold, m.submodules.out = self.fold, self.out
        wiring.connect(m, out.o, wiring.flipped(self.o))
        m.d.comb += [out.columns.eq(fold.columns), out.loaded.eq(fold.loaded),
                     out.d_log2.eq(fold.d_log2), out.d_log2_next.eq(fold.d_log2_next),
                     out.psum.eq(fold.psum), out.to_output.eq(fold.to_output),
                     out.to_lane.eq(fold.to_lane), out.output_next.eq(fold.output_next),
                     out.lane_next.eq(fold.lane_next), fold.out_free.eq(out.free)]
        return m


def saturate(x: int, width: int) -> int:
    return max(-(1 << (width - 1)), min((1 << (width - 1)) - 1, x))


def run(cfg, p_sum_bits, count, *, stall, seed):
    rng = random.Random(seed)
    dut = FoldAndOutput(cfg, p_sum_bits)
    fold, out = dut.fold, dut.out
    sizes = fold.sizes
    Mv, LMV, depth = cfg.pv_mults, sizes.mults_log2, cfg.pv_lane_depth
    big = 1 << (sizes.sum_width - LMV - 2)
    queries = []
    for _ in range(count):
        d = rng.choice(cfg.head_dims)
        sums = [rng.choice([rng.randrange(-big, big), big - 1, -big]) for _ in range(Mv)]
        folded = [sum(sums[j::d]) for j in range(d)]
        lane = [rng.randrange(-(1 << (cfg.out_width - 1)), 1 << (cfg.out_width - 1))
                for _ in range(d)]
        renorm = rng.randrange(2)
        want = ([saturate(x >> sizes.plain_shift, cfg.out_width) for x in folded] if not renorm
                else lane)
        queries.append({"d": d, "d_log2": d.bit_length() - 1, "sums": sums, "folded": folded,
                        "renorm": renorm, "psum": rng.randrange(1 << cfg.psum_width),
                        "lane": lane, "want": want + [0] * (Mv - d)})
    state = {"next": 0, "arrive": None, "in_f": None, "arrived": None, "recip_at": None,
             "lane": None, "lane_busy": False, "prev": {}, "moved": []}

    def watch(ctx, cycle):
        st, prev = state, state["prev"]
        # the lane: reads at start + 1 .. start + d, results pv_lane_depth later
        lane_q, reading, left, result, done = st["lane"], 0, 0, None, 0
        if lane_q is not None:
            q, t0 = lane_q
            j = cycle - t0 - 1
            if 0 <= j < q["d"]:
                reading, left = 1, q["d"] - 1 - j
                assert ctx.get(fold.columns[j]) == q["folded"][j], \
                    f"cycle {cycle}: the lane reads column {j} of a changed F"
            r = cycle - t0 - 1 - depth
            if 0 <= r < q["d"]:
                result, done = q["lane"][r], int(r == q["d"] - 1)
        ctx.set(fold.lane_reading, reading)
        ctx.set(fold.lane_columns_left, left)
        ctx.set(fold.lane_busy, st["lane_busy"])
        ctx.set(fold.lane_done, done)
        ctx.set(out.lane_done, done)
        ctx.set(out.lane_valid, result is not None)
        ctx.set(out.lane_result, result or 0)
        ctx.set(out.lane_psum, lane_q[0]["psum"] if lane_q else 0)
        # the reciprocal of the renormalised query in F (or arriving): ready after a delay
        q_rn = st["in_f"] if st["in_f"] is not None else None
        ready = (q_rn is not None and queries[q_rn]["renorm"] and st["recip_at"] is not None
                 and cycle >= st["recip_at"])
        ctx.set(fold.recip_ready, ready)
        # arrivals: decided a cycle ahead (load_next), when F is sure to be free by then
        arrive = st["arrive"] == cycle
        q = queries[st["next"] - 1] if arrive else None
        ctx.set(fold.arriving, {"valid": arrive, "last": arrive, "renorm": q["renorm"] if q
                                else 0, "d_log2": q["d_log2"] if q else 0,
                                "psum": q["psum"] if q else 0})
        ctx.set(fold.sums, q["sums"] if q else [rng.randrange(-big, big) for _ in range(Mv)])
        holding, renorm = ctx.get(fold.holding), ctx.get(fold.renorm)
        steps, out_valid = ctx.get(fold.steps_left), ctx.get(out.valid)
        free_soon = (not holding or (not renorm and steps <= 1 and not out_valid
                                     and not st["lane_busy"])
                     or (renorm and reading and left <= 1))
        decide = (st["arrive"] is None or st["arrive"] < cycle) and not arrive and \
            st["next"] < len(queries) and free_soon and rng.random() < 0.7
        ctx.set(fold.load_next, decide)
        # the hand-over: exactly the first cycle the contract allows
        to_output, to_lane = ctx.get(fold.to_output), ctx.get(fold.to_lane)
        if st["in_f"] is not None:
            qf = queries[st["in_f"]]
            allowed = (cycle >= st["arrived"] + LMV - qf["d_log2"] + 1 and ctx.get(out.free)
                       and not prev.get("lane_stays", False))
            if qf["renorm"]:
                allowed = allowed and prev.get("ready", False)
            assert to_output == (allowed and not qf["renorm"]), f"cycle {cycle}: to_output"
            assert to_lane == (allowed and qf["renorm"]), f"cycle {cycle}: to_lane"
        else:
            assert not to_output and not to_lane
        if to_lane:
            qf = queries[st["in_f"]]
            assert ctx.get(fold.last_column) == qf["d"] - 1 and ctx.get(fold.psum) == qf["psum"]
            st["lane"], st["lane_busy"] = (qf, cycle), True
        if to_output or to_lane:
            st["moved"].append(st["in_f"])
            st["in_f"] = None
        if done:
            st["lane_busy"] = False
        prev["lane_stays"] = st["lane_busy"] and not done
        prev["ready"] = ready
        if arrive:
            st["in_f"], st["arrived"] = st["next"] - 1, cycle
            st["recip_at"] = cycle + rng.choice([0, 1, 3, 20])
        if decide:
            st["arrive"] = cycle + 1
            st["next"] += 1

    res = run_streams(dut, sources={}, sinks={"o": count}, stall=stall, rng=rng, watch=watch,
                      quiet=depth + 4, max_cycles=count * (3 * Mv + 60) + 200)
    for k, (beat, q) in enumerate(zip(res["beats"]["o"], queries, strict=True)):
        assert beat == {"data": q["want"], "psum": q["psum"]}, f"query {k} (d {q['d']}, " \
            f"renorm {q['renorm']})"
    assert state["moved"] == list(range(count))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_queries(name, stall):
    cfg, p_sum_bits = CONFIGS[name]
    run(cfg, p_sum_bits, 40, stall=stall, seed=pick_seed())


def test_bad_parameters():
    for unit in (FoldRegister, OutputRegister):
        with pytest.raises(TypeError, match="AttentionConfig"):
            unit(config=None)
