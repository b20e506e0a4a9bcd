# amaranth: UnusedElaboratable=no
"""The softmax's exp pass (`hw/attention/softmax_exp.py`).

`ExpReader`: rows taken with their e bank under random row gaps and claim backpressure; every
row's beats read back to back, in order, from the right bank, with the right side information;
the score bank released at the last read. `ExpPipeline`: reads with random gaps; every e written
exactly `STAGES` cycles after its read, bit for bit `golden.attention.softmax`'s e (0 above the
beat's count), every row's esum strobed exactly `sum_latency` cycles after its last read. Set
SPATTEN_SEED to fix the seed."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.golden.attention import ScoreParams, softmax
from spatten.hw.attention.softmax_common import E_BANKS, bank_depth
from spatten.hw.attention.softmax_exp import ExpPipeline, ExpReader, exp_rom
from spatten.sim.infra.amaranth_tb import run_streams, to_py
from spatten.sim.infra.testbench import pick_seed
from spatten.sim.testbenches.unit_top import lane_beats

CONFIGS = {
    "small": AttentionConfig(qk_mults=16, capacity=64),                     # S = 4
    "s1": AttentionConfig(qk_mults=16, capacity=32, softmax_lanes=1),
    "s8-depth6": AttentionConfig(qk_mults=64, capacity=48, softmax_lanes=8),
}


def random_params(cfg, rng) -> dict:
    return {"shift": rng.randrange(cfg.dot_width + 1), "scale": rng.randrange(1 << cfg.scale_bits),
            "post_shift": rng.randrange(32)}


# ------------------------------------------------------------------------------ the reader
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.6), (0.4, 0.4)])
def test_reader(name, gap, stall):
    cfg = CONFIGS[name]
    seed = pick_seed()
    rng = random.Random(seed)
    S, depth = cfg.softmax_lanes, bank_depth(cfg)
    rows = []
    for k in range(30):
        beats = rng.choice([1, 2, depth, rng.randrange(1, depth + 1)])
        rows.append({"bank": k % 2, "error": rng.randrange(2), "n": rng.randrange(cfg.capacity),
                     "beats": beats, "last_count": rng.randrange(1, S + 1),
                     "max": rng.randrange(-1000, 1000), **random_params(cfg, rng)})
    dut = ExpReader(config=cfg)
    taken, reads, releases = [], {}, {}
    claim_bank = [0]

    def watch(ctx, cycle):
        ctx.set(dut.claim_bank, claim_bank[0])
        read = to_py(ctx.get(dut.reads))
        if read["valid"]:
            reads[cycle] = dict(read, score_addr=ctx.get(dut.score_read.addr))
        if ctx.get(dut.release):
            releases[cycle] = ctx.get(dut.release_bank)
        if ctx.get(dut.rows.valid) and ctx.get(dut.rows.ready):
            assert ctx.get(dut.claim.valid) and ctx.get(dut.claim.ready)
            taken.append((cycle, claim_bank[0]))
            claim_bank[0] = (claim_bank[0] + 1) % E_BANKS

    res = run_streams(dut, sources={"rows": rows}, sinks={"claim": len(rows)}, gap=gap,
                      stall=stall, rng=rng, watch=watch, quiet=depth + 2,
                      max_cycles=60 * len(rows) * depth)
    fields = ("error", "n", "beats", "last_count", "max")
    assert res["beats"]["claim"] == [{f: row[f] for f in fields} for row in rows]
    expected_reads = {}
    for k, (row, (t, bank)) in enumerate(zip(rows, taken, strict=True)):
        if k:                      # taken only when the previous row is at its last read
            prev_t, prev = taken[k - 1][0], rows[k - 1]
            assert t >= prev_t + prev["beats"], f"row {k} taken at {t} during the previous"
        for b in range(row["beats"]):
            last = b == row["beats"] - 1
            expected_reads[t + 1 + b] = {
                "valid": 1, "bank": bank, "addr": b, "last": int(last), "first": int(b == 0),
                "count": row["last_count"] if last else S, "max": row["max"],
                **{f: row[f] for f in ("shift", "scale", "post_shift")},
                "score_addr": row["bank"] * depth + b}
        assert releases.get(t + row["beats"]) == row["bank"], f"row {k}: release"
    assert reads == expected_reads
    assert len(releases) == len(rows)


# ------------------------------------------------------------------------------ the datapath
class PipelineWithRom(ExpPipeline):
    """`ExpPipeline` reading an exponent ROM of its own, as the softmax's."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.submodules.exp_rom = rom = exp_rom(self.cfg)
        for lane in range(self.cfg.softmax_lanes):
            port = rom.read_port()
            m.d.comb += [port.addr.eq(self.rom_addr[lane]), self.rom_data[lane].eq(port.data)]
        return m


def run_pipeline(cfg, rows, *, gap, seed):
    """Feed `rows` ((dots, params) each) through an ExpPipeline, one read a cycle with random
    idle cycles; check every write and every esum (values and cycles)."""
    rng = random.Random(seed)
    S, depth = cfg.softmax_lanes, bank_depth(cfg)
    dut = PipelineWithRom(config=cfg)
    schedule = []                  # (bank, beat index, beat, row index, params, max)
    for k, (dots, params) in enumerate(rows):
        beats = lane_beats(dots, S)
        for b, beat in enumerate(beats):
            schedule.append({"row": k, "bank": k % E_BANKS, "addr": b, "beat": beat,
                             "first": b == 0, "last": b == len(beats) - 1,
                             "max": max(dots), **params})
    golden = [softmax(cfg, dots, ScoreParams(**params)) for dots, params in rows]
    want_writes, want_sums = {}, {}
    got_writes, got_sums = {}, {}

    async def bench(ctx):
        pending = None
        cycle = 0
        queue = list(schedule)
        while queue or cycle < max(list(want_writes) + list(want_sums) + [0]) + 2:
            issue = bool(queue) and rng.random() >= gap
            if issue:
                item = queue.pop(0)
                ctx.set(dut.reads, {"valid": 1, "bank": item["bank"], "addr": item["addr"],
                                    "last": item["last"], "first": item["first"],
                                    "count": item["beat"]["count"], "max": item["max"],
                                    "shift": item["shift"], "scale": item["scale"],
                                    "post_shift": item["post_shift"]})
                e = golden[item["row"]].e[item["addr"] * S:item["addr"] * S + S].tolist()
                want_writes[cycle + ExpPipeline.STAGES] = {
                    "addr": item["bank"] * depth + item["addr"],
                    "data": [int(x) for x in e] + [0] * (S - len(e))}
                if item["last"]:
                    want_sums[cycle + dut.sum_latency] = {
                        "valid": 1, "bank": item["bank"], "esum": int(golden[item["row"]].esum)}
            else:
                ctx.set(dut.reads.valid, 0)
            # the score memory: the data of the previous cycle's read (junk above the count)
            data = pending["beat"]["data"][:pending["beat"]["count"]] if pending else []
            ctx.set(dut.dots, data + [rng.randrange(-99, 99) for _ in range(S - len(data))])
            pending = item if issue else None
            if ctx.get(dut.e_write.en):
                got_writes[cycle] = {"addr": ctx.get(dut.e_write.addr),
                                     "data": to_py(ctx.get(dut.e_write.data))}
            if ctx.get(dut.summed.valid):
                got_sums[cycle] = to_py(ctx.get(dut.summed))
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got_writes == want_writes
    assert got_sums == want_sums


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gap", [0.0, 0.5])
def test_pipeline(name, gap):
    cfg = CONFIGS[name]
    seed = pick_seed()
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (cfg.dot_width - 1)), (1 << (cfg.dot_width - 1)) - 1
    prng = random.Random(seed)
    rows = []
    for k in range(12):
        n = int(rng.integers(1, cfg.capacity + 1))
        width = int(rng.integers(4, cfg.dot_width))
        dots = np.clip(rng.integers(-(1 << width), 1 << width, n), lo, hi)
        if k == 0:
            dots = np.array([lo, hi] * 3)                                    # the widest t
        params = random_params(cfg, prng) if k % 2 else {"shift": 0, "scale": 45000,
                                                         "post_shift": 18}
        rows.append(([int(x) for x in dots], params))
    run_pipeline(cfg, rows, gap=gap, seed=seed)


def test_latencies():
    cfg = AttentionConfig()
    assert ExpPipeline(config=cfg).sum_latency + 1 == cfg.softmax_exp_latency == 15


def test_bad_config():
    for unit in (ExpReader, ExpPipeline):
        with pytest.raises(TypeError, match="AttentionConfig"):
            unit(config=1)
