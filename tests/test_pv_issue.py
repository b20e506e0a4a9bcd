# amaranth: UnusedElaboratable=no
"""The front of prob x V (`hw/attention/pv_issue.py`).

`PairRuns`: queries of random kept pairs (junk in the lanes above the count, junk d_log2 and
renorm on later beats) under random input gaps and output backpressure; every beat's words,
row-slots, runs and probability sum against a model; latency 2. `WordIssue`: beats with their
runs under random gaps and a random grant; every issued word (address, block probabilities,
first/last, psum, d_log2, renorm) in order against the model, a query's last word only with
the grant, the runs of a beat back to back, the read enables, the MAC count. Set SPATTEN_SEED
to fix the seed."""

import random

import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.hw.attention.pv_common import MIN_D_LOG2, ProbVSizes
from spatten.hw.attention.pv_issue import PairRuns, WordIssue
from spatten.sim.infra.amaranth_tb import run_streams, to_py
from spatten.sim.infra.testbench import pick_seed

CONFIGS = {
    "small": AttentionConfig(pv_mults=16, qk_mults=16, capacity=64),            # S = 4
    "mv64-s4": AttentionConfig(),
    "mv32-s16": AttentionConfig(pv_mults=32, qk_mults=32, capacity=64, softmax_lanes=16),
    "mv8-s1": AttentionConfig(pv_mults=8, qk_mults=8, capacity=32, softmax_lanes=1,
                              topk_lanes=1),
}


def make_queries(cfg, rng: random.Random, count: int) -> list[dict]:
    """Queries: ascending kept indices (dense, sparse, one, none), probabilities, d, renorm."""
    S, N = cfg.softmax_lanes, cfg.capacity
    queries = []
    for k in range(count):
        d = rng.choice(cfg.head_dims)
        kind = k % 4
        n = rng.randrange(1, min(N, 40) + 1)
        if kind == 0:
            start = rng.randrange(N - n + 1)
            kept = list(range(start, start + n))
        elif kind == 1:
            kept = sorted(rng.sample(range(N), n))
        elif kind == 2:
            kept = [rng.randrange(N)]
        else:
            kept = []
        probs = [rng.choice([0, 1, 65535, rng.randrange(65536)]) for _ in kept]
        beats = []
        for lo in range(0, max(1, len(kept)), S):
            chunk = kept[lo:lo + S]
            junk = S - len(chunk)
            beats.append({"index": chunk + [rng.randrange(N) for _ in range(junk)],
                          "prob": probs[lo:lo + S] + [rng.randrange(65536) for _ in range(junk)],
                          "count": len(chunk), "last": int(lo + S >= len(kept))})
        queries.append({"kept": kept, "probs": probs, "d": d, "renorm": rng.randrange(2),
                        "beats": beats})
    return queries


def runs_of(sizes: ProbVSizes, beat: dict, d_log2: int, renorm: int, first: int) -> dict:
    """The model of a beat with its runs (`run_beat_layout`)."""
    cfg = sizes.cfg
    S, LMV = cfg.softmax_lanes, sizes.mults_log2
    shift = LMV - d_log2
    word = [x >> shift for x in beat["index"]]
    slot = [x & ((1 << shift) - 1) for x in beat["index"]]
    kept = [int(j < beat["count"]) for j in range(S)]
    prob = [p if k else 0 for p, k in zip(beat["prob"], kept, strict=True)]
    segment, run = [], 0
    for j in range(S):
        run += j > 0 and kept[j] and word[j] != word[j - 1]
        segment.append(run)
    return {"segment": segment, "last_segment": segment[-1], "word": word, "slot": slot,
            "prob": prob, "kept": kept, "psum": sum(prob), "count": beat["count"],
            "first": first, "last": beat["last"], "renorm": renorm, "d_log2": d_log2}


def model_runs(sizes, queries) -> list[dict]:
    return [runs_of(sizes, beat, q["d"].bit_length() - 1, q["renorm"], int(k == 0))
            for q in queries for k, beat in enumerate(q["beats"])]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.6), (0.3, 0.4)])
def test_pair_runs(name, gap, stall):
    cfg = CONFIGS[name]
    seed = pick_seed()
    rng = random.Random(seed)
    queries = make_queries(cfg, rng, 24)
    dut = PairRuns(config=cfg)
    LMV = dut.sizes.mults_log2
    beats, side = [], []
    for q in queries:
        for k, beat in enumerate(q["beats"]):
            beats.append(beat)
            dl = q["d"].bit_length() - 1
            if k == 0 and dl == MIN_D_LOG2 and rng.randrange(2):
                dl = rng.randrange(MIN_D_LOG2)                 # clamped up to 3
            side.append({"d_log2": dl if k == 0 else rng.randrange(LMV + 1),
                         "renorm": q["renorm"] if k == 0 else rng.randrange(2)})
    res = run_streams(dut, sources={"i": beats}, sinks={"runs": len(beats)}, sideband={"i": side},
                      gap=gap, stall=stall, rng=rng, quiet=3,
                      max_cycles=20 * len(beats) + 100)
    want = model_runs(dut.sizes, queries)
    for k, (got, exp) in enumerate(zip(res["beats"]["runs"], want, strict=True)):
        assert got == exp, f"beat {k}:\n got  {got}\n want {exp}"
    if stall == 0.0:
        assert [t + 2 for t in res["accepted"]["i"]] == res["seen"]["runs"]
        if gap == 0.0:
            assert res["accepted"]["i"] == list(range(len(beats)))


def model_words(sizes, runs: list[dict]) -> list[dict]:
    """The words `WordIssue` issues for these beats: one per run, in order."""
    words, psum = [], 0
    for beat in runs:
        psum = (0 if beat["first"] else psum) + beat["psum"]
        dl = beat["d_log2"]
        for r in range(beat["last_segment"] + 1):
            match = [beat["kept"][j] and beat["segment"][j] == r for j in range(len(beat["kept"]))]
            block_prob = [0] * sizes.blocks
            for j, hit in enumerate(match):
                for b in range(sizes.blocks):
                    if hit and beat["slot"][j] == b >> (dl - MIN_D_LOG2):
                        block_prob[b] |= beat["prob"][j]
            addr = 0
            for j, hit in enumerate(match):
                addr |= beat["word"][j] if hit else 0
            words.append({"word": {"valid": 1, "last": int(beat["last"] and
                                                            r == beat["last_segment"]),
                                   "first": int(beat["first"] and r == 0),
                                   "renorm": beat["renorm"], "d_log2": dl, "psum": psum,
                                   "block_prob": block_prob},
                          "read": int(any(match)), "addr": addr if any(match) else None})
    return words


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gap,grant", [(0.0, 1.0), (0.5, 1.0), (0.0, 0.3), (0.4, 0.6)])
def test_word_issue(name, gap, grant):
    cfg = CONFIGS[name]
    seed = pick_seed()
    rng = random.Random(seed)
    dut = WordIssue(config=cfg)
    runs = model_runs(dut.sizes, make_queries(cfg, rng, 24))
    words = model_words(dut.sizes, runs)
    res = run_issue(dut, runs, len(words), gap=gap, grant=grant, rng=rng)
    assert res["words"] == [w["word"] for w in words]
    assert res["reads"] == [(w["read"], w["addr"]) for w in words]
    for k, (t, w) in enumerate(zip(res["cycles"], words, strict=True)):
        if w["word"]["last"]:
            assert res["grants"][t], f"word {k}: a query's last word without the grant"
    # the runs of a beat go back to back
    first_of_beat = [0]
    for beat in runs:
        first_of_beat.append(first_of_beat[-1] + beat["last_segment"] + 1)
    for lo, hi in zip(first_of_beat, first_of_beat[1:], strict=False):
        for k in range(lo + 1, hi):
            t0, t1 = res["cycles"][k - 1], res["cycles"][k]
            waited = words[k]["word"]["last"] and not all(res["grants"][t0 + 1:t1])
            assert t1 == t0 + 1 or waited, f"word {k}: a gap inside a beat"
    macs = sum(beat["count"] << beat["d_log2"] for beat in runs)
    assert res["macs"] == macs % (1 << 32)


def run_issue(dut, runs, count, *, gap, grant, rng):
    """Run `WordIssue` on `runs` (offered with random gaps) with a random grant until it has
    issued `count` words; record each word on R1, its read, its cycle and every cycle's
    grant, and check that R1 is valid exactly after an issue."""
    out = {"words": [], "reads": [], "cycles": [], "grants": [], "macs": None}

    async def bench(ctx):
        k, presenting, last_issue = 0, False, None
        cycle = 0
        while len(out["words"]) < count:
            assert cycle < 40 * count + 200, "WordIssue stalled"
            if not presenting and k < len(runs) and rng.random() >= gap:
                ctx.set(dut.runs.payload, runs[k])
                presenting = True
            ctx.set(dut.runs.valid, presenting)
            g = rng.random() < grant
            ctx.set(dut.grant, g)
            out["grants"].append(g)
            if last_issue is not None:
                out["words"].append(to_py(ctx.get(dut.word)))
                assert ctx.get(dut.word_read) == (last_issue[0] * ((1 << len(dut.word_read)) - 1))
                last_issue = None
            read, addr = ctx.get(dut.read_enable), ctx.get(dut.read_addr)
            take = presenting and ctx.get(dut.runs.ready)
            await ctx.tick()
            # R1 says whether a word was issued in the cycle just ended
            if ctx.get(dut.word.valid):
                last_issue = (read, addr if read else None)
                out["reads"].append(last_issue)
                out["cycles"].append(cycle)
            if take:
                presenting = False
                k += 1
            cycle += 1
        out["macs"] = ctx.get(dut.macs)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def test_bad_parameters():
    for unit in (PairRuns, WordIssue):
        with pytest.raises(TypeError, match="AttentionConfig"):
            unit(config=None)
        with pytest.raises(ValueError, match="p_sum_bits must be an int from 16"):
            unit(config=AttentionConfig(), p_sum_bits=40)
