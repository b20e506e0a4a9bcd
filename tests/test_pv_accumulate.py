# amaranth: UnusedElaboratable=no
"""The accumulators of prob x V (`hw/attention/pv_accumulate.py`): queries of random words (back to
back and with gaps, one-word queries, every d), random products (and junk products between queries,
which a query's start must clear); each query's sums at its last word against a model (the
products of its words plus the rounding constant in the lanes below d), the side information
two registers late, load_next one, the in-flight flags. Set SPATTEN_SEED to fix the seed."""

import random

import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.hw.attention.pv_accumulate import Accumulators
from spatten.sim.infra.amaranth_tb import to_py
from spatten.sim.infra.testbench import pick_seed

CONFIGS = {
    "small": AttentionConfig(pv_mults=16, qk_mults=16, capacity=64),
    "default-p17": (AttentionConfig(), 17),
    "mv8": AttentionConfig(pv_mults=8, qk_mults=8, capacity=32, softmax_lanes=1, topk_lanes=1),
}


def schedule(cfg, rng, queries):
    """Per cycle: the word at R1 (or None) and the products arriving at R3 (0 in a query's
    cycles without a word, junk between queries)."""
    cycles = []
    for _ in range(queries):
        d_log2 = rng.choice([d.bit_length() - 1 for d in cfg.head_dims])
        renorm, psum = rng.randrange(2), rng.randrange(1 << 17)
        count = rng.choice([1, 1, 2, rng.randrange(1, 12)])
        for k in range(count):
            cycles.append({"valid": 1, "last": int(k == count - 1), "first": int(k == 0),
                           "renorm": renorm, "d_log2": d_log2, "psum": psum + k,
                           "block_prob": [0] * 1})
            if k < count - 1:
                cycles += [None] * rng.choice([0, 0, 1, 3])
        cycles += [None] * rng.choice([0, 0, 1, 2, 5])
    return cycles


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sums(name):
    cfg, p_sum_bits = CONFIGS[name] if isinstance(CONFIGS[name], tuple) else (CONFIGS[name], None)
    seed = pick_seed()
    rng = random.Random(seed)
    dut = Accumulators(config=cfg, p_sum_bits=p_sum_bits)
    sizes, Mv = dut.sizes, cfg.pv_mults
    blocks = sizes.blocks
    words = schedule(cfg, rng, 40)
    for w in words:
        if w is not None:
            w["block_prob"] = [0] * blocks
    # products fit their port, and 12 words cannot overflow the sums
    limit = 1 << min(cfg.data_width + cfg.prob_bits - 1, sizes.sum_width - 6)
    n = len(words) + 4
    # products at R3 of cycle c belong to the word at R1 in c - 2
    in_query, open_ = [False] * n, False
    for c, w in enumerate(words):
        if w is not None and w["first"]:
            open_ = True
        in_query[c] = open_
        if w is not None and w["last"]:
            open_ = False
    products = []
    for c in range(n):
        r1 = words[c - 2] if 2 <= c < len(words) + 2 else None
        busy = 2 <= c < len(words) + 2 and in_query[c - 2]
        if r1 is not None or not busy:
            products.append([rng.randrange(-limit, limit) for _ in range(Mv)])
        else:
            products.append([0] * Mv)
    got, seen = [], []

    async def bench(ctx):
        for c in range(n):
            w = words[c] if c < len(words) else None
            ctx.set(dut.word, w or {"valid": 0, "last": 0, "first": 0, "renorm": 0,
                                    "d_log2": 3, "psum": 0, "block_prob": [0] * blocks})
            ctx.set(dut.products, products[c])
            prev = [words[c - k] if 0 <= c - k < len(words) else None for k in (1, 2)]
            arriving = to_py(ctx.get(dut.arriving))
            want = prev[1] or {"valid": 0, "last": 0}
            assert arriving["valid"] == want["valid"] and arriving["last"] == want["last"]
            if prev[1] is not None:
                for key in ("renorm", "d_log2", "psum"):
                    assert arriving[key] == prev[1][key], (c, key)
            assert ctx.get(dut.load_next) == bool(prev[0] and prev[0]["last"])
            assert ctx.get(dut.last_in_flight) == any(p and p["last"] for p in prev)
            assert ctx.get(dut.busy) == any(p is not None for p in prev)
            if arriving["last"]:
                got.append(to_py(ctx.get(dut.sums)))
                seen.append(c)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # the model: from a query's first word at R3 to its last, the products, plus the constant
    want, start = [], None
    for c in range(2, n):
        w = words[c - 2] if c - 2 < len(words) else None
        if w is not None and w["first"]:
            start, d = c, 1 << w["d_log2"]
        if w is not None and w["last"]:
            want.append([(sizes.rounding if e < d else 0)
                         + sum(products[t][e] for t in range(start, c + 1)) for e in range(Mv)])
    assert len(got) == len(want) > 30
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"query {k} (cycle {seen[k]})"


def test_bad_parameters():
    with pytest.raises(TypeError, match="AttentionConfig"):
        Accumulators(config=1)
    with pytest.raises(ValueError, match="p_sum_bits"):
        Accumulators(config=AttentionConfig(), p_sum_bits=15)
