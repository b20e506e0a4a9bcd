# amaranth: UnusedElaboratable=no
"""The registered adder tree (`hw/common/adder_tree.py`): every offered level's sums of the terms of
exactly `latency` cycles earlier, the tag alongside, for signed and unsigned terms, extreme
values, and bad parameters. Set SPATTEN_SEED to fix the seed of the random terms."""

import random

import pytest
from amaranth.hdl import signed, unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from spatten.hw.common.adder_tree import AdderTree, level_sums_layout
from spatten.sim.infra.testbench import pick_seed

TAG = data.StructLayout({"valid": 1, "what": 5})


@pytest.fixture
def seed():
    return pick_seed()


def bounds(shape):
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def simulate(tree: AdderTree, term_sets, tags) -> list[tuple[dict, dict]]:
    """(sums, tag) in every cycle while `term_sets` and `tags` go in one a cycle, then `latency`
    cycles of zeros."""
    out = []
    terms = len(tree.terms)

    async def bench(ctx):
        for t in range(len(term_sets) + tree.latency):
            ctx.set(tree.terms, term_sets[t] if t < len(term_sets) else [0] * terms)
            ctx.set(tree.tag, tags[t] if t < len(tags) else {"valid": 0, "what": 0})
            sums = ctx.get(tree.sums)
            tag = ctx.get(tree.sums_tag)
            out.append(({name: list(getattr(sums, name)) for name in tree.sums.shape().members},
                         {"valid": tag.valid, "what": tag.what}))
            await ctx.tick()

    sim = Simulator(tree)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def level_sums(values, min_level):
    top = len(values).bit_length() - 1
    return {f"level{k}": [sum(values[i:i + (1 << k)]) for i in range(0, len(values), 1 << k)]
            for k in range(min_level, top + 1)}


@pytest.mark.parametrize("term_shape,terms,min_level", [
    (signed(24), 64, 3),          # the Q.K array's products at the default config
    (signed(8), 16, 0), (unsigned(6), 8, 1), (signed(1), 2, 0), (unsigned(3), 4, 2),
], ids=repr)
def test_sums_of_every_level_after_exactly_latency(term_shape, terms, min_level, seed):
    rng = random.Random(seed)
    tree = AdderTree(term_shape=term_shape, terms=terms, min_level=min_level, tag_shape=TAG)
    assert tree.latency == terms.bit_length() - 1
    lo, hi = bounds(term_shape)
    # the extremes (every term the smallest, the largest, alternating), then random terms
    sets = [[lo] * terms, [hi] * terms, [lo, hi] * (terms // 2), [hi, lo] * (terms // 2)]
    sets += [[rng.randint(lo, hi) for _ in range(terms)] for _ in range(40)]
    tags = [{"valid": rng.randrange(2), "what": rng.randrange(32)} for _ in sets]
    got = simulate(tree, sets, tags)
    zero = ({f"level{k}": [0] * (terms >> k) for k in range(min_level, tree.latency + 1)},
            {"valid": 0, "what": 0})
    want = [zero] * tree.latency + [(level_sums(s, min_level), tag)
                                    for s, tag in zip(sets, tags, strict=True)]
    assert got == want


def test_layout_widths_are_exact():
    layout = level_sums_layout(signed(24), 64, 3)
    assert list(layout.members) == [f"level{k}" for k in range(3, 7)]
    assert [(layout.members[f"level{k}"].length, layout.members[f"level{k}"].elem_shape)
            for k in range(3, 7)] == [(64 >> k, signed(24 + k)) for k in range(3, 7)]
    assert level_sums_layout(unsigned(4), 2, 0).members["level1"].elem_shape == unsigned(5)


def test_rejects_bad_parameters():
    good = {"term_shape": signed(8), "terms": 8, "min_level": 0, "tag_shape": 1}
    for key, bad, error, match in [
        ("terms", 6, ValueError, "terms must be a power of two >= 2, not 6"),
        ("terms", 1, ValueError, "terms must be a power of two"),
        ("terms", True, ValueError, "terms must be a power of two"),
        ("min_level", 4, ValueError, r"min_level must be an integer in 0..3 .*not 4"),
        ("min_level", -1, ValueError, "min_level must be an integer"),
        ("term_shape", "wide", TypeError, "term_shape must be shape-castable"),
        ("tag_shape", None, TypeError, "tag_shape must be shape-castable"),
    ]:
        with pytest.raises(error, match=match):
            AdderTree(**{**good, key: bad})
    with pytest.raises(TypeError):
        AdderTree(signed(8), 8, 0, 1)                 # keyword-only
