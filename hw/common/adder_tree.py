"""A registered adder tree that offers the sums of every level it is asked for, aligned.

Level k of a tree over T = 2**L terms holds T / 2**k sums, each of 2**k neighbouring terms
(sum i of level k = terms i*2**k .. (i+1)*2**k - 1). The Q.K array (`hw/attention/qk.py`) reads
level log2(d) as the dot products of a K word at head dimension d.
"""

from __future__ import annotations

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AdderTree", "level_sums_layout"]


def _log2(x: int) -> int:
    return x.bit_length() - 1


def level_sums_layout(term_shape, terms: int, min_level: int) -> data.StructLayout:
    """``{"level<k>": ArrayLayout(shape of width w + k, terms >> k)}`` for k = min_level ..
    log2(terms), w the terms' width (exact sums: one bit a level), signed like the terms."""
    shape = Shape.cast(term_shape)
    return data.StructLayout({
        f"level{k}": data.ArrayLayout(Shape(shape.width + k, shape.signed), terms >> k)
        for k in range(min_level, _log2(terms) + 1)})


class AdderTree(wiring.Component):
    """Sums of 2**k neighbouring terms for every level k >= ``min_level``, all of the same
    terms, ``latency`` = log2(terms) cycles after them; one set of terms a cycle.

    Parameters (keyword-only)
    -------------------------
    term_shape : shape of each term (signed or unsigned)
    terms : int, a power of two >= 2
    min_level : int in 0..log2(terms), the lowest level offered on ``sums``
    tag_shape : shape of a tag that travels with the terms (e.g. their valid bit and what they
        are); its registers reset, the sums' do not

    Ports
    -----
    terms : In(ArrayLayout(term_shape, terms))
    tag : In(tag_shape)
    sums : Out(`level_sums_layout`(term_shape, terms, min_level))
        In cycle t, level k's sums of the terms of cycle t - latency.
    sums_tag : Out(tag_shape)
        ``tag`` of cycle t - latency.

    One register per level (each level adds pairs of the level below); the sums of a level
    below the top are delayed by registers of their own to the depth of the top level.
    """

    def __init__(self, *, term_shape, terms: int, min_level: int, tag_shape):
        for name, shape in (("term_shape", term_shape), ("tag_shape", tag_shape)):
            try:
                Shape.cast(shape)
            except TypeError as e:
                raise TypeError(f"{name} must be shape-castable, not {shape!r}") from e
        if not isinstance(terms, int) or isinstance(terms, bool) or terms < 2 or \
                terms & (terms - 1):
            raise ValueError(f"terms must be a power of two >= 2, not {terms!r}")
        levels = _log2(terms)
        if not isinstance(min_level, int) or isinstance(min_level, bool) or \
                not 0 <= min_level <= levels:
            raise ValueError(f"min_level must be an integer in 0..{levels} (log2 of {terms} "
                             f"terms), not {min_level!r}")
        self.term_shape, self.min_level = term_shape, min_level
        #: cycles from the terms to their sums
        self.latency = levels
        super().__init__({
            "terms": In(data.ArrayLayout(term_shape, terms)),
            "tag": In(tag_shape),
            "sums": Out(level_sums_layout(term_shape, terms, min_level)),
            "sums_tag": Out(tag_shape),
        })

    def elaborate(self, platform):
        m = Module()
        top = self.latency
        width, signed = Shape.cast(self.term_shape).width, Shape.cast(self.term_shape).signed
        tree = [[self.terms[i] for i in range(len(self.terms))]]
        tag = self.tag
        for k in range(1, top + 1):
            prev = tree[-1]
            level = [Signal(Shape(width + k, signed), name=f"sum{k}_{i}", reset_less=True)
                     for i in range(len(prev) // 2)]
            m.d.sync += [s.eq(prev[2 * i] + prev[2 * i + 1]) for i, s in enumerate(level)]
            tree.append(level)
            next_tag = Signal.like(self.tag, name=f"tag_level{k}")
            m.d.sync += next_tag.eq(tag)
            tag = next_tag
        m.d.comb += self.sums_tag.eq(tag)
        for k in range(self.min_level, top + 1):
            values = tree[k]
            for stage in range(top - k):
                delayed = [Signal.like(v, name=f"tap{k}_{stage}_{i}", reset_less=True)
                           for i, v in enumerate(values)]
                m.d.sync += [d.eq(v) for d, v in zip(delayed, values, strict=True)]
                values = delayed
            out = getattr(self.sums, f"level{k}")
            m.d.comb += [out[i].eq(v) for i, v in enumerate(values)]
        return m
