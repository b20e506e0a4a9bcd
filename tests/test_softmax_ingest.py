# amaranth: UnusedElaboratable=no
"""The softmax's ingest (`hw/attention/softmax_ingest.py`): good and error rows into the two score
banks under random input gaps, descriptor backpressure and late bank releases; every descriptor and
every bank's contents checked, a bank never written while it holds an unreleased row, the
descriptor's latency exact. Set SPATTEN_SEED to fix the seed."""

import random

import pytest
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from spatten.config import AttentionConfig
from spatten.hw.attention.softmax_ingest import ScoreIngest
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import pick_seed
from spatten.sim.testbenches.unit_top import lane_beats

CONFIGS = {
    "small": AttentionConfig(qk_mults=16, capacity=64),                     # S = 4, 16 beats
    "s1": AttentionConfig(qk_mults=16, capacity=32, softmax_lanes=1),
    "depth12": AttentionConfig(qk_mults=16, capacity=48),                   # not a power of two
}


class IngestWithMemory(ScoreIngest):
    """`ScoreIngest` writing into a score memory of its own (``memory``)."""

    def __init__(self, *, config):
        super().__init__(config=config)
        self.memory = Memory(shape=self.score_write.data.shape(), depth=2 * self.depth, init=[])

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.submodules.memory = self.memory
        wiring.connect(m, self.score_write, self.memory.write_port())
        return m


def make_rows(cfg, rng: random.Random, count: int) -> list[dict]:
    """Good rows of random length (1 .. capacity) and error rows: over the capacity, an empty
    beat, a partial beat that is not the last, a count above S; each with its registers."""
    S, cap = cfg.softmax_lanes, cfg.capacity
    lo, hi = -(1 << (cfg.dot_width - 1)), (1 << (cfg.dot_width - 1)) - 1
    rows = []
    for k in range(count):
        params = {"shift": rng.randrange(cfg.dot_width + 1),
                  "scale": rng.randrange(1 << cfg.scale_bits), "post_shift": rng.randrange(32)}
        n = rng.choice([1, S, cap, rng.randrange(1, cap + 1), rng.randrange(1, cap + 1)])
        dots = [rng.choice([lo, hi, rng.randrange(lo, hi + 1)]) for _ in range(n)]
        beats, error = lane_beats(dots, S), False
        kind = k % 6
        if kind == 1:                                   # over the capacity
            beats, error = lane_beats(dots + [0] * (cap + 1 - n + rng.randrange(2 * S)), S), True
        elif kind == 2 and len(beats) > 1:              # an empty beat inside the row
            beats[0] = dict(beats[0], count=0)
            error = True
        elif kind == 3 and S > 1 and len(beats) > 1:    # a partial beat that is not the last
            beats[0] = dict(beats[0], count=S - 1)
            error = True
        elif kind == 4:                                 # a count above S (or 0 in a last beat)
            beats[-1] = dict(beats[-1], count=S + 1 if S < 4 else 0)
            error = True
        rows.append({"beats": beats, "dots": dots, "params": params, "error": error})
    return rows


def expected(cfg, row, bank) -> dict:
    S = cfg.softmax_lanes
    if row["error"]:
        return {"bank": bank, "error": 1, "n": 0, "beats": 1, "last_count": 0, "max": 0,
                **row["params"]}
    n = len(row["dots"])
    beats = -(-n // S)
    return {"bank": bank, "error": 0, "n": n, "beats": beats, "last_count": n - S * (beats - 1),
            "max": max(row["dots"]), **row["params"]}


def run(cfg, rows, *, gap, stall, hold, seed):
    """Feed `rows`; release each bank `hold` cycles (at most) after its descriptor is taken.
    Checks the descriptors, the banks' contents when a descriptor is taken, that no write hits a
    bank holding an unreleased row, and the latency when nothing stalls."""
    rng = random.Random(seed)
    dut = IngestWithMemory(config=cfg)
    depth = dut.depth
    beats, side, last_beat = [], [], []
    for row in rows:
        for k, beat in enumerate(row["beats"]):
            beats.append(beat)
            side.append(row["params"] if k == 0 else     # later beats' registers are ignored
                        {"shift": rng.randrange(cfg.dot_width + 1), "scale": 1, "post_shift": 3})
        last_beat.append(len(beats) - 1)
    releases = {}                  # cycle -> bank
    held = set()                   # banks with a complete row not yet released
    taken = []

    def watch(ctx, cycle):
        if ctx.get(dut.score_write.en):
            bank = ctx.get(dut.score_write.addr) // depth
            assert bank not in held, f"cycle {cycle}: bank {bank} written before its release"
        bank = releases.pop(cycle, None)
        ctx.set(dut.release, bank is not None)
        ctx.set(dut.release_bank, bank or 0)
        if bank is not None:
            held.discard(bank)
        if ctx.get(dut.rows.valid) and ctx.get(dut.rows.ready):
            desc = ctx.get(dut.rows.payload)
            k = len(taken)
            taken.append(cycle)
            row = rows[k]
            if not row["error"]:
                for b, beat in enumerate(row["beats"]):
                    word = ctx.get(dut.memory.data[desc.bank * depth + b])
                    assert [int(word[i]) for i in range(beat["count"])] == \
                        beat["data"][:beat["count"]], f"row {k}: beat {b} in the bank"
            held.add(int(desc.bank))
            at = cycle + 1 + rng.randrange(hold + 1)
            while at in releases:
                at += 1
            releases[at] = int(desc.bank)

    res = run_streams(dut, sources={"i": beats}, sinks={"rows": len(rows)},
                      sideband={"i": side}, gap=gap, stall=stall, rng=rng, watch=watch,
                      max_cycles=40 * len(beats) + 40 * len(rows) * (hold + 4) + 100)
    got = res["beats"]["rows"]
    for k, row in enumerate(rows):
        assert got[k] == expected(cfg, row, k % 2), f"row {k}: {got[k]}"
    if stall == 0.0:
        accepted = res["accepted"]["i"]
        for k, t in enumerate(res["seen"]["rows"]):
            assert t == accepted[last_beat[k]] + dut.latency, f"row {k}: latency"
    return res


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gap,stall,hold", [(0.0, 0.0, 0), (0.4, 0.0, 30), (0.0, 0.6, 5),
                                            (0.3, 0.4, 60)])
def test_rows(name, gap, stall, hold):
    seed = pick_seed()
    cfg = CONFIGS[name]
    rows = make_rows(cfg, random.Random(seed), 24)
    run(cfg, rows, gap=gap, stall=stall, hold=hold, seed=seed)


def test_back_to_back_latency():
    """Rows of one beat, nothing stalled, banks released at once: a row every cycle until both
    banks are full; the descriptor 3 + log2 S cycles after the row's beat."""
    cfg = CONFIGS["small"]
    rows = [{"beats": lane_beats([k, -k], 4), "dots": [k, -k], "error": False,
             "params": {"shift": 1, "scale": 2, "post_shift": 3}} for k in range(8)]
    res = run(cfg, rows, gap=0.0, stall=0.0, hold=0, seed=1)
    assert ScoreIngest(config=cfg).latency == cfg.softmax_ingest_latency == 5
    assert res["accepted"]["i"][:2] == [0, 1]


def test_bad_config():
    with pytest.raises(TypeError, match="AttentionConfig"):
        ScoreIngest(config=None)
    with pytest.raises(TypeError):
        ScoreIngest(CONFIGS["small"])
