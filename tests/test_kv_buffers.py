# amaranth: UnusedElaboratable=no
"""The query pipeline's K and V buffers (`hw/attention/kv_buffers.py`): whole-word loads and the
fetch unit's group writes under random gaps, loads first (the write streams wait), loads beyond the
buffer dropped with ``load_error``; every word read back a cycle after its address, in either
bank, K at full precision or with the LSB plane filled; a word read while written gives the new
data; bad parameters. Set SPATTEN_SEED to fix the seed."""

import random

import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig, MemoryConfig
from spatten.hw.attention.kv_buffers import KVBuffers
from spatten.sim.infra.amaranth_tb import run_streams, to_py
from spatten.sim.infra.testbench import pick_seed

CONFIGS = {
    # a power-of-two buffer (the bank offset is an OR) and one that is not (an addition, and
    # load addresses beyond the buffer exist)
    "m16c64": AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                              topk_lanes=8),
    "m16v8c40": AttentionConfig(qk_mults=16, pv_mults=8, capacity=40, softmax_lanes=1,
                                topk_lanes=4),
}
MEMORY = MemoryConfig(msb_bits=8)


@pytest.fixture
def seed():
    return pick_seed()


class Model:
    """The buffers' contents: K's planes and V, per word and element."""

    def __init__(self, cfg, memory):
        self.cfg, self.lb = cfg, memory.lsb_bits(cfg.data_width)
        self.msb = [[0] * cfg.qk_mults for _ in range(cfg.capacity)]
        self.lsb = [[0] * cfg.qk_mults for _ in range(cfg.capacity)]
        self.v = [[0] * cfg.pv_mults for _ in range(cfg.capacity)]

    def load(self, beat):
        if beat["addr"] >= self.cfg.capacity:
            return
        if beat["target"] == 0:
            for e in range(self.cfg.qk_mults):
                self.msb[beat["addr"]][e] = beat["data"][e] >> self.lb
                self.lsb[beat["addr"]][e] = beat["data"][e] & ((1 << self.lb) - 1)
        else:
            self.v[beat["addr"]] = list(beat["data"][:self.cfg.pv_mults])

    def write(self, plane, beat):
        for e, value in enumerate(beat["data"]):
            if beat["en"] >> (e // 8) & 1:
                getattr(self, plane)[beat["addr"]][e] = value

    def k_word(self, addr, full, fill_mid):
        fill = 1 << (self.lb - 1) if fill_mid else 0
        return [(m << self.lb) | (lo if full else fill)
                for m, lo in zip(self.msb[addr], self.lsb[addr], strict=True)]


def random_word(rng, count, bits, signed=True):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return [rng.randint(lo, hi) for _ in range(count)]


def read_back(dut, model, offset, rng):
    """An async testbench step: every word of the bank at `offset` read through both ports
    (K at full precision or filled, at random), each checked the cycle after its address."""
    cfg = model.cfg
    words = cfg.capacity - offset

    async def bench(ctx):
        ctx.set(dut.offset, offset)
        ctx.set(dut.k_rd.en, 1)
        ctx.set(dut.v_rd.en, 1)
        pending = None
        for addr in [*range(words), None]:
            if pending is not None:
                k_addr, full, fill_mid = pending
                at = k_addr + offset
                assert to_py(ctx.get(dut.k_rd.data)) == model.k_word(at, full, fill_mid)
                assert to_py(ctx.get(dut.v_rd.data)) == model.v[at]
            if addr is None:
                break
            full, fill_mid = rng.randrange(2), rng.randrange(2)
            ctx.set(dut.k_rd.addr, addr)
            ctx.set(dut.v_rd.addr, addr)
            ctx.set(dut.k_full, full)
            ctx.set(dut.fill_mid, fill_mid)
            pending = (addr, full, fill_mid)
            await ctx.tick()
    return bench


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gap", [0.0, 0.5])
def test_loads_and_writes_then_every_word_in_both_banks(name, gap, seed):
    """Loads (while ``load_enable`` is high, at random) and the three write streams at once,
    with random gaps: the loads go first, the streams wait (never taken in a load's cycle),
    loads beyond the buffer are dropped with ``load_error``; then every word reads back as the
    model has it, in bank 0 and in bank 1."""
    cfg = CONFIGS[name]
    rng = random.Random(seed)
    dut = KVBuffers(config=cfg, memory=MEMORY)
    M, Mv, N, W = cfg.qk_mults, cfg.pv_mults, cfg.capacity, cfg.data_width
    MB, LB = MEMORY.msb_bits, MEMORY.lsb_bits(W)
    addr_top = (1 << (N - 1).bit_length()) - 1         # loads may address past the buffer
    loads = [{"target": rng.randrange(2), "addr": rng.randint(0, addr_top),
              "data": random_word(rng, max(M, Mv), W)} for _ in range(3 * N)]
    streams = {
        "k_msb_wr": [{"addr": rng.randrange(N), "data": random_word(rng, M, MB),
                      "en": rng.randrange(1, 1 << (M // 8))} for _ in range(2 * N)],
        "k_lsb_wr": [{"addr": rng.randrange(N), "data": random_word(rng, M, LB, signed=False),
                      "en": rng.randrange(1, 1 << (M // 8))} for _ in range(2 * N)],
        "v_wr": [{"addr": rng.randrange(N), "data": random_word(rng, Mv, W),
                  "en": rng.randrange(1, 1 << (Mv // 8))} for _ in range(2 * N)],
    }
    planes = {"k_msb_wr": "msb", "k_lsb_wr": "lsb", "v_wr": "v"}
    model = Model(cfg, MEMORY)
    log = {"load": [], "load_error": [], "beyond": []}

    def watch(ctx, cycle):
        # the beats taken in this cycle go into the model in the order the buffers take them
        ctx.set(dut.load_enable, rng.random() < 0.5)
        loading = ctx.get(dut.loading)
        assert loading == (ctx.get(dut.load.valid) & ctx.get(dut.load_enable))
        if loading:
            beat = to_py(ctx.get(dut.load.payload))
            log["load"].append(cycle)
            log["beyond"] += [cycle] if beat["addr"] >= N else []
            model.load(beat)
        if ctx.get(dut.load_error):
            log["load_error"].append(cycle)
        for name, plane in planes.items():
            port = getattr(dut, name)
            if ctx.get(port.valid) and ctx.get(port.ready):
                assert not loading, f"{name} taken during a load"
                model.write(plane, to_py(ctx.get(port.payload)))

    async def finish(ctx):
        ctx.set(dut.load.valid, 0)
        await read_back(dut, model, 0, rng)(ctx)
        if N % 2 == 0:
            await read_back(dut, model, N // 2, rng)(ctx)

    res = run_streams(dut, sources={"load": loads, **streams}, sinks={}, gap=gap, rng=rng,
                      watch=watch, quiet=40 * N, finish=finish)
    assert all(len(res["accepted"][k]) == len(v) for k, v in {"load": loads, **streams}.items())
    assert res["accepted"]["load"] == log["load"]
    assert log["load_error"] == log["beyond"]
    assert bool(log["beyond"]) == bool(N & (N - 1)), "loads past a buffer that has such addresses"


def test_a_word_read_while_written_gives_the_new_data():
    """The read ports are transparent: a K or V word written in the cycle it is read reads back
    new (the groups written) and old (the others) alike from the next cycle."""
    cfg = CONFIGS["m16c64"]
    dut = KVBuffers(config=cfg, memory=MEMORY)
    model = Model(cfg, MEMORY)
    rng = random.Random(1)
    M, Mv = cfg.qk_mults, cfg.pv_mults
    first = {"addr": 5, "data": random_word(rng, M, MEMORY.msb_bits), "en": 0b11}
    second = {"addr": 5, "data": random_word(rng, M, MEMORY.msb_bits), "en": 0b10}
    v_beat = {"addr": 5, "data": random_word(rng, Mv, cfg.data_width), "en": 0b01}

    async def bench(ctx):
        ctx.set(dut.k_full, 1)
        for beat in (first, second):
            ctx.set(dut.k_msb_wr.payload, beat)
            ctx.set(dut.k_msb_wr.valid, 1)
            ctx.set(dut.k_rd.addr, 5)
            ctx.set(dut.v_wr.payload, v_beat)
            ctx.set(dut.v_wr.valid, beat is second)
            ctx.set(dut.v_rd.addr, 5)
            await ctx.tick()
            model.write("msb", beat)
            if beat is second:
                model.write("v", v_beat)
            assert to_py(ctx.get(dut.k_rd.data)) == model.k_word(5, True, False)
            assert to_py(ctx.get(dut.v_rd.data)) == model.v[5]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_rejects_bad_parameters():
    cfg = CONFIGS["m16c64"]
    with pytest.raises(TypeError, match="config must be an AttentionConfig, not None"):
        KVBuffers(config=None, memory=MEMORY)
    with pytest.raises(TypeError, match="memory must be a MemoryConfig, not 8"):
        KVBuffers(config=cfg, memory=8)
    with pytest.raises(TypeError):
        KVBuffers(cfg, MEMORY)                              # keyword-only
