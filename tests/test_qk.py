# amaranth: UnusedElaboratable=no
"""The Q.K array (`hw/attention/qk.py`) against `golden.attention.qk` and `golden.qk_cycles`.

Amaranth-simulator tests drive `sim.tb_qk.QKTop` (the array with its K buffer) cycle by cycle:
every d of a small and of the default config, n = 1 / not a multiple of g or S / the most keys
the buffer holds, extreme values, back-to-back queries (cycle counts equal to the model),
d and n changing from query to query, random gaps on ``q`` and backpressure on ``o``. One cocotb
run on Verilator repeats the checks through the ``load`` port (`sim/tb_qk.py`).
Set SPATTEN_SEED to fix the seed of the random tests.
"""

import random
import time

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.sim import Simulator

from spatten.config import AttentionConfig, TopKConfig, preset
from spatten.golden.attention import qk as golden_qk
from spatten.golden.qk_cycles import qk_cycle_model, qk_latency, qk_query_cycles, qk_schedule
from spatten.hw.attention.qk import (
    PACK_LATENCY,
    DotPacker,
    QKArray,
    QKIssue,
    k_depth,
    output_fifo_depth,
)
from spatten.hw.attention.qk import qk_latency as hw_qk_latency
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import run_testbench
from spatten.sim.testbenches.tb_qk import QKTop, expected_beats, k_words
from spatten.sim.testbenches.unit_top import random_elements

SMALL = AttentionConfig(qk_mults=16, capacity=64, softmax_lanes=4)
DEFAULT = AttentionConfig()
VARIANTS = {
    "preset-small": preset("small").attention,                          # M=8, S=1
    "m32-s16": AttentionConfig(qk_mults=32, capacity=64, softmax_lanes=16),   # g <= S always
    "m64-s1": AttentionConfig(qk_mults=64, capacity=32, softmax_lanes=1, topk_lanes=1),
    "m16-depth24": AttentionConfig(qk_mults=16, capacity=48, softmax_lanes=2),  # depth not 2**k
}


def max_keys(cfg, d):
    """Keys of dimension d the K buffer holds: capacity, at any d."""
    return cfg.capacity


def dims(cfg):
    return [1 << i for i in range(3, cfg.qk_mults.bit_length())]


# ---------------------------------------------------------------------------------------------
# Cycle-by-cycle harness


def run_queries(cfg, flat, queries, *, rng=None, gap=0.0, stall=0.0, max_cycles=None):
    """Simulate `QKTop` with the K buffer holding the flat elements `flat` and offer `queries`
    ((q beat of M elements, d, n) each, optionally followed by the d_log2 and n to drive) on
    ``q`` (idle with probability `gap` before each beat); ``o.ready`` is low with probability
    `stall`. Checks the stream rules of ``o`` every cycle, that nothing more comes out, and the
    dots of every query against the golden model. Returns a dict of the cycles of the ``q`` and
    ``o`` transfers, the K reads, busy per cycle and the macs counter."""
    flat = np.asarray(flat, dtype=np.int64)
    assert flat.size == k_depth(cfg) * cfg.qk_mults
    want = []
    for qv, d, n, *_ in queries:
        want += expected_beats(cfg, golden_qk(cfg, np.asarray(qv[:d]), flat[:n * d].reshape(n, d)))
    max_cycles = max_cycles or 200 + int(4 * (len(want) + sum(q[2] for q in queries))
                                         * (1 + 10 * max(gap, stall)))
    top = QKTop(cfg, init=k_words(cfg, flat))
    res = {"reads": 0, "busy": []}

    def watch(ctx, cycle):
        res["reads"] += ctx.get(top.qk.k_rd.en)
        res["busy"].append(ctx.get(top.busy))

    async def finish(ctx):
        res["macs"] = ctx.get(top.macs)

    side = [{"d_log2": raw[0] if raw else d.bit_length() - 1, "n": raw[1] if raw else n}
            for _, d, n, *raw in queries]
    run = run_streams(top, sources={"q": [q[0] for q in queries]}, sinks={"o": len(want)},
                      sideband={"q": side}, rng=rng or random.Random(0), gap=gap, stall=stall,
                      max_cycles=max_cycles, watch=watch, quiet=3, finish=finish)
    res.update(q=run["accepted"]["q"], o=run["seen"]["o"], beats=run["beats"]["o"])
    for k, (beat, w) in enumerate(zip(res["beats"], want, strict=True)):
        assert beat == w, f"beat {k} in cycle {res['o'][k]}: {beat} != {w}"
    return res


def random_flat(cfg, rng, kind="uniform"):
    return random_elements(cfg, rng, k_depth(cfg) * cfg.qk_mults, kind)


def q_beat(cfg, rng, d, kind="uniform"):
    """q (d elements of `kind`) then M-d random elements that the array must ignore."""
    lo, hi = cfg.data_min, cfg.data_max
    head = {"min": [lo] * d, "max": [hi] * d,
            "mixed": list(rng.choice([lo, hi], d))}.get(kind) or \
        list(rng.integers(lo, hi + 1, d))
    return [int(x) for x in head] + [int(x) for x in rng.integers(lo, hi + 1,
                                                                  cfg.qk_mults - d)]


def check_unstalled(cfg, queries, res):
    """Back-to-back queries, o always ready: cycles and K reads equal to the model."""
    ns = [n for _, _, n in queries]
    ds = [d for _, d, _ in queries]
    model = qk_cycle_model(cfg, ns, ds, len(queries))
    assert res["o"][-1] - res["q"][0] == model, \
        f"cycles {res['o'][-1] - res['q'][0]} != model {model}"
    # first and last beat of every query where the model puts them (no bubble between queries)
    ends = [i for i, b in enumerate(res["beats"]) if b["last"]]
    starts = [0] + [i + 1 for i in ends[:-1]]
    q0 = res["q"][0]
    got = [(res["o"][a] - q0, res["o"][b] - q0) for a, b in zip(starts, ends, strict=True)]
    assert got == qk_schedule(cfg, ns, ds, len(queries))
    assert res["reads"] == sum(-(-n // (cfg.qk_mults // d)) for n, d in zip(ns, ds, strict=True))
    if ns[0] == 1 or cfg.qk_mults // ds[0] >= cfg.softmax_lanes:
        assert res["o"][0] - res["q"][0] == qk_latency(cfg)


def check_common(cfg, queries, res):
    assert res["macs"] == sum(q[1] * q[2] for q in queries) % (1 << 32)
    # busy exactly from the cycle after a query's q transfer to its last o transfer
    last_o = [c for c, b in zip(res["o"], res["beats"], strict=True) if b["last"]]
    want = [int(any(qc < c <= oc for qc, oc in zip(res["q"], last_o, strict=True)))
            for c in range(len(res["busy"]))]
    bad = [c for c, (a, b) in enumerate(zip(res["busy"], want, strict=True)) if a != b]
    assert not bad, f"busy wrong in cycles {bad[:10]} (q at {res['q']}, last o at {last_o})"


# ---------------------------------------------------------------------------------------------
# Tests


def edge_queries(cfg, rng, d, kind="uniform"):
    """n = 1, n not a multiple of g or S, the most keys the buffer holds, back to back."""
    g, S = cfg.qk_mults // d, cfg.softmax_lanes
    units = [u for u in (g, S) if u > 1]
    odd = next(n for n in range(max(g, S) + 1, 4 * max(g, S) + 4) if all(n % u for u in units))
    ns = [1, min(odd, max_keys(cfg, d)), max_keys(cfg, d), 1, min(3, max_keys(cfg, d))]
    return [(q_beat(cfg, rng, d, kind), d, n) for n in ns]


def random_queries(cfg, rng, count):
    """`count` queries of random d and n."""
    queries = []
    for _ in range(count):
        d = int(rng.choice(dims(cfg)))
        queries.append((q_beat(cfg, rng, d), d, int(rng.integers(1, max_keys(cfg, d) + 1))))
    return queries


def check_every_d(cfg, seed):
    """Edge queries at every d over one buffer, back to back: exact, as modelled."""
    rng = np.random.default_rng(seed)
    flat = random_flat(cfg, rng)
    for d in dims(cfg):
        queries = edge_queries(cfg, rng, d)
        res = run_queries(cfg, flat, queries, rng=random.Random(seed))
        check_unstalled(cfg, queries, res)
        check_common(cfg, queries, res)


@pytest.mark.parametrize("cfg", [SMALL, DEFAULT], ids=["small", "default"])
def test_every_d_back_to_back(cfg, seed):
    """Every d; n = 1, odd, full buffer; dots exact, cycles and reads equal to the model."""
    check_every_d(cfg, seed)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_variants(name, seed):
    """S = 1, S > g, a K buffer depth that is not a power of two: every d, back to back."""
    check_every_d(VARIANTS[name], seed)


@pytest.mark.parametrize("cfg", [SMALL, DEFAULT], ids=["small", "default"])
@pytest.mark.parametrize("kind", ["min", "max", "minmax", "mixed"])
def test_extreme_values(cfg, kind):
    """All -2**(W-1) (the largest dot, M x 2**(2W-2) at d = M), all max, min x max (the most
    negative dot), mixed: the dot width holds every case exactly."""
    rng = np.random.default_rng(7)
    flat = random_flat(cfg, rng, {"minmax": "max"}.get(kind, kind))
    qkind = {"minmax": "min"}.get(kind, kind)
    queries = []
    for d in dims(cfg):
        queries += [(q_beat(cfg, rng, d, qkind), d, min(max_keys(cfg, d), 2 * cfg.qk_mults // d
                                                        + 1))]
    res = run_queries(cfg, flat, queries)
    check_unstalled(cfg, queries, res)
    check_common(cfg, queries, res)
    if kind == "min":
        top = res["beats"][-1]["data"][0]
        assert top == cfg.qk_mults * (1 << (2 * cfg.data_width - 2)) == \
            (1 << (cfg.dot_width - 2))


@pytest.mark.parametrize("cfg", [SMALL, VARIANTS["m64-s1"]], ids=["small", "m64-s1"])
def test_d_and_n_change_per_query(cfg, seed):
    """d and n are sampled with each q beat: a random sequence of (d, n) back to back over one
    buffer (read as keys of the query's d) is exact, with cycles equal to the model."""
    rng = np.random.default_rng(seed)
    flat = random_flat(cfg, rng)
    queries = random_queries(cfg, rng, 14)
    res = run_queries(cfg, flat, queries, rng=random.Random(seed))
    check_unstalled(cfg, queries, res)
    check_common(cfg, queries, res)


@pytest.mark.parametrize("gap,stall", [(0.3, 0.4), (0.0, 0.7), (0.6, 0.1)])
@pytest.mark.parametrize("cfg", [SMALL, VARIANTS["m64-s1"], VARIANTS["m32-s16"]],
                         ids=["small", "m64-s1", "m32-s16"])
def test_gaps_and_backpressure(cfg, gap, stall, seed):
    """Random idle cycles before q beats and random o backpressure: nothing lost or duplicated,
    the stream rules hold, never faster than the model."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    flat = random_flat(cfg, rng)
    queries = random_queries(cfg, rng, 10)
    res = run_queries(cfg, flat, queries, rng=prng, gap=gap, stall=stall)
    check_common(cfg, queries, res)
    model = qk_cycle_model(cfg, [n for *_, n in queries], [d for _, d, _ in queries],
                           len(queries))
    assert res["o"][-1] - res["q"][0] >= model


def test_out_of_range_inputs_are_clamped():
    """d_log2 below 3 reads as 3 and above log2 M as log2 M; n = 0 as 1, n > N as N."""
    cfg = SMALL
    rng = np.random.default_rng(3)
    flat = random_flat(cfg, rng)
    queries = [(q_beat(cfg, rng, 8), 8, 1, 0, 0), (q_beat(cfg, rng, 8), 8, 64, 1, 127),
               (q_beat(cfg, rng, 16), 16, 5, 7, 5)]
    res = run_queries(cfg, flat, queries)
    check_unstalled(cfg, [q[:3] for q in queries], res)
    check_common(cfg, queries, res)


def test_default_full_buffer_stalled(seed):
    """Default config, n = capacity at d = 8 (g = 8 > S: output-bound) under backpressure."""
    cfg = DEFAULT
    rng = np.random.default_rng(seed)
    flat = random_flat(cfg, rng, "mixed")
    queries = [(q_beat(cfg, rng, 8), 8, cfg.capacity), (q_beat(cfg, rng, 64), 64, 7)]
    res = run_queries(cfg, flat, queries, rng=random.Random(seed), gap=0.2, stall=0.3)
    check_common(cfg, queries, res)


def test_cycle_model():
    for cfg in [SMALL, DEFAULT, *VARIANTS.values()]:
        assert qk_latency(cfg) == hw_qk_latency(cfg) == QKArray(config=cfg).latency
        L = cfg.qk_mults.bit_length() - 1
        for d in dims(cfg):
            g = cfg.qk_mults // d
            for n in (1, 2, 7, cfg.capacity):
                want = -(-n // min(g, cfg.softmax_lanes))
                assert qk_query_cycles(cfg, n, d) == want
                assert qk_cycle_model(cfg, n, d, 3) == 3 * want + L + 8
    assert qk_cycle_model(DEFAULT, [1, 9], [8, 64], 2) == 1 + 9 + 6 + 8
    with pytest.raises(ValueError, match="head dimension"):
        qk_query_cycles(DEFAULT, 4, 128)
    with pytest.raises(ValueError, match="2 entries for 3 queries"):
        qk_cycle_model(DEFAULT, [1, 2], 8, 3)


def test_ports_and_sizes():
    qk = QKArray(config=DEFAULT)
    sig = qk.signature.members
    assert sig["q"].signature.members["payload"].shape.size == 64 * 12
    assert sig["o"].signature.members["payload"].shape.size == 4 * 30 + 3 + 1
    assert Shape.cast(sig["k_rd"].signature.members["addr"].shape).width == 10  # 1024 words
    assert sig["k_rd"].flow.name == "In"
    assert qk.depth == k_depth(DEFAULT) == 1024
    assert [Shape.cast(sig[p].shape).width for p in ("macs", "busy", "d_log2", "n")] == \
        [32, 1, 3, 11]


@pytest.mark.parametrize("args,kwargs,exc,msg", [
    ((), {"config": None}, TypeError, "config must be a spatten.config.AttentionConfig, not None"),
    ((), {"config": TopKConfig()}, TypeError, "AttentionConfig, not TopKConfig"),
    ((), {"config": {"qk_mults": 64}}, TypeError, "AttentionConfig"),
    ((AttentionConfig(),), {}, TypeError, "positional"),
    ((), {}, TypeError, "config"),
])
def test_bad_config(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        QKArray(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# cocotb on Verilator


@pytest.mark.parametrize("cfg,runs", [(SMALL, 16), (DEFAULT, 6)], ids=["small", "default"])
def test_cocotb_verilator(cfg, runs, seed):
    from spatten.sim.infra.runner import simulator_missing

    missing = simulator_missing("verilator")
    if missing:
        pytest.skip(missing)
    t0 = time.monotonic()
    res = run_testbench(lambda: QKTop(cfg), name="qk", tb_module="spatten.sim.testbenches.tb_qk",
                        config=cfg, settings={"seed": seed % (1 << 31), "runs": runs})
    print(f"verilator: built={res.built} ({res.build_seconds:.1f} s), run {res.run_seconds:.1f} s,"
          f" total {time.monotonic() - t0:.1f} s; {res.summary()}")
    assert res.failed == 0 and res.passed == 3, res.summary()



# ---------------------------------------------------------------------------------------------
# The array's parts on their own: the read stage and the beat packer


def word_model(cfg, d, n):
    """[(descriptor {l, nvalid, last, pos}, output beats it completes)] of the K words a query
    of n keys at head dimension d reads, in order (n = 0 counts as 1, above the capacity as the
    capacity)."""
    g, S = cfg.qk_mults // d, cfg.softmax_lanes
    rest, words = min(max(n, 1), cfg.capacity), []
    while rest:
        nvalid = min(g, rest)
        rest -= nvalid
        pos = len(words) % (S // g) if g <= S else 0
        beats = -(-nvalid // S) if g > S else int(pos == S // g - 1 or rest == 0)
        words.append(({"l": d.bit_length() - 1, "nvalid": nvalid, "last": int(rest == 0),
                       "pos": pos}, beats))
    return words


def reserved_entries(cfg, word, beats):
    """Output FIFO entries `QKIssue` reserves for a word: one per beat the word starts."""
    return beats if cfg.qk_mults >> word["l"] > cfg.softmax_lanes else int(word["pos"] == 0)


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.3), (0.0, 0.8)])
@pytest.mark.parametrize("cfg", [SMALL, VARIANTS["m64-s1"], VARIANTS["m32-s16"]],
                         ids=["small", "m64-s1", "m32-s16"])
def test_issue_reads_each_query_in_order_within_the_fifo_room(cfg, gap, stall, seed):
    """`QKIssue` under random gaps on ``q`` and beats taken from the output FIFO at random:
    every query's words read in order with their descriptors and query, the reserved FIFO
    entries never above `output_fifo_depth`, ``busy`` exact; back to back and unstalled, each
    query reads for exactly `qk_query_cycles` cycles with no bubble between queries."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    # (q, d, n) or (q, d, n, d_log2 and n driven): n = 0 reads as 1, d_log2 = 0 as 3
    queries = random_queries(cfg, rng, 8) + [(q_beat(cfg, rng, 8), 8, 1, 3, 0),
                                             (q_beat(cfg, rng, 8), 8, cfg.capacity, 0,
                                              cfg.capacity)]
    side = [{"d_log2": raw[0] if raw else d.bit_length() - 1, "n": raw[1] if raw else n}
            for _, d, n, *raw in queries]
    models = [word_model(cfg, d, n) for _, d, n, *_ in queries]
    every_word = [(w, beats) for model in models for w, beats in model]
    dut = QKIssue(config=cfg)
    reads, words, taken, busy_log = [], [], [], []    # reads: (cycle, addr, entries reserved)

    def watch(ctx, cycle):
        # the word read in the previous cycle comes with its descriptor and query
        if reads and reads[-1][0] == cycle - 1:
            assert ctx.get(dut.word.valid) == 1
            got = ctx.get(dut.word)
            words.append(({f: getattr(got, f) for f in ("l", "nvalid", "last", "pos")},
                          list(ctx.get(dut.word_q))))
        else:
            assert ctx.get(dut.word.valid) == 0, f"a word without a read in cycle {cycle}"
        used = sum(r for *_, r in reads) - len(taken)
        assert used <= output_fifo_depth(cfg), f"FIFO overrun in cycle {cycle}"
        busy_log.append((ctx.get(dut.busy), used))
        # a beat is taken only once it can have reached the FIFO
        arrived = sum(r for c, _, r in reads if c <= cycle - cfg.qk_read_latency)
        take = int(arrived > len(taken) and prng.random() >= stall)
        ctx.set(dut.beat_taken, take)
        if take:
            taken.append(cycle)
        if ctx.get(dut.k_rd_en):
            w, beats = every_word[len(reads)]
            reads.append((cycle, ctx.get(dut.k_rd_addr), reserved_entries(cfg, w, beats)))

    total_beats = sum(b for _, b in every_word)
    res = run_streams(dut, sources={"q": [q[0] for q in queries]}, sinks={}, sideband={"q": side},
                      rng=prng, gap=gap, watch=watch,
                      quiet=200 + int(12 * (total_beats + len(every_word)) / (1 - stall)))
    accepted = res["accepted"]["q"]
    assert len(accepted) == len(queries) and len(reads) == len(every_word)
    assert len(taken) == sum(r for *_, r in reads) == total_beats, "beats reserved and taken"
    first = [sum(len(m) for m in models[:qi]) for qi in range(len(queries) + 1)]
    last_read = [reads[first[qi + 1] - 1][0] for qi in range(len(queries))]
    for qi, (qbeat, d, *_) in enumerate(queries):
        mine = slice(first[qi], first[qi + 1])
        assert [a for _, a, _ in reads[mine]] == list(range(len(models[qi])))
        assert reads[first[qi]][0] > accepted[qi]
        assert [w for w, _ in words[mine]] == [w for w, _ in models[qi]]
        assert all(q == [qbeat[j % d] for j in range(cfg.qk_mults)] for _, q in words[mine])
    # busy: a query accepted and not all of it read, or reserved entries not all taken
    for cycle, (busy, used) in enumerate(busy_log):
        reading = any(a < cycle <= r for a, r in zip(accepted, last_read, strict=True))
        assert busy == int(reading or used > 0), f"busy in cycle {cycle}"
    if gap == stall == 0.0:
        # back to back: the next query is taken in the cycle of the last read, and each query
        # holds the read stage for as many cycles as the model says
        assert accepted[1:] == last_read[:-1]
        starts = [reads[first[qi]][0] for qi in range(len(queries))]
        assert starts[0] == accepted[0] + 1
        assert [b - a for a, b in zip(starts, starts[1:], strict=False)] == \
            [qk_query_cycles(cfg, n, d) for _, d, n, *_ in queries[:-1]]


@pytest.mark.parametrize("gap", [0.0, 0.5])
@pytest.mark.parametrize("cfg", [SMALL, VARIANTS["m64-s1"], VARIANTS["m32-s16"]],
                         ids=["small", "m64-s1", "m32-s16"])
def test_dot_packer_packs_words_into_beats(cfg, gap, seed):
    """`DotPacker`: the words of random queries (their dots at level log2 d, garbage in the
    other levels and in the lanes past nvalid), paced as `QKIssue` paces them, with random idle
    cycles between them: exactly the queries' beats, each `PACK_LATENCY` cycles after the word
    that completes it, and ``macs`` = sum(n d)."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    dut = DotPacker(config=cfg)
    assert dut.latency == PACK_LATENCY
    lo, hi = -(1 << (cfg.dot_width - 1)), (1 << (cfg.dot_width - 1)) - 1
    levels = dut.dots.shape().members
    schedule, want, want_at, macs = [], [], [], 0      # schedule: a (word, dots) or None a cycle
    for _ in range(10):
        d = int(rng.choice(dims(cfg)))
        n = int(rng.integers(1, 3 * max(cfg.qk_mults // d, cfg.softmax_lanes) + 2))
        width = 2 * cfg.data_width + d.bit_length() - 1     # the level's sums
        dots = [prng.randrange(-(1 << (width - 1)), 1 << (width - 1)) for _ in range(n)]
        want += expected_beats(cfg, dots)
        macs += n * d
        for w, beats in word_model(cfg, d, n):
            while prng.random() < gap:
                schedule.append(None)
            sums = {k: [prng.randrange(lo, hi) >> (cfg.dot_width - levels[k].elem_shape.width)
                        for _ in range(levels[k].length)] for k in levels}
            sums[f"level{w['l']}"][:w["nvalid"]] = dots[:w["nvalid"]]
            dots = dots[w["nvalid"]:]
            want_at += [len(schedule) + PACK_LATENCY + k for k in range(beats)]
            schedule.append(({**w, "valid": 1}, sums))
            # QKIssue reads nothing more while a word's beats leave (g > S)
            schedule += [None] * max(0, beats - 1)
    got, got_at = [], []

    async def bench(ctx):
        for t in range(len(schedule) + PACK_LATENCY + 2):
            now = schedule[t] if t < len(schedule) else None
            ctx.set(dut.word.valid, now is not None)
            if now is not None:
                ctx.set(dut.word, now[0])
                ctx.set(dut.dots, now[1])
            if ctx.get(dut.beat_valid):
                beat = ctx.get(dut.beat)
                got.append({"data": list(beat.data), "count": beat.count, "last": beat.last})
                got_at.append(t)
            await ctx.tick()
        assert ctx.get(dut.macs) == macs

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert got_at == want_at


def test_parts_reject_bad_configs():
    for part in (QKIssue, DotPacker):
        with pytest.raises(TypeError, match="config must be a spatten.config.AttentionConfig"):
            part(config=TopKConfig())
        with pytest.raises(TypeError):
            part(DEFAULT)                                     # keyword-only
