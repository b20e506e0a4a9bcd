"""The units that can be emitted, simulated and built on their own, by name.

Each entry makes the unit's top `wiring.Component` from a whole `Config`; the command line
(`spatten verilog|synth --top NAME`) and the board builds look units up here.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spatten.config import Config

__all__ = ["TOPS", "make_top", "Fed"]


class Fed(wiring.Component):
    """A unit whose wide inputs come from inside, for synthesis in its real surroundings.

    Every input port or input-stream payload wider than `narrow` bits is driven from a shift
    register of its own (the k-th of them in the order of the signature) that takes ``beat``
    (``width`` bits) rotated left by 7k bits whenever ``beat_valid`` is high (as
    the fetch unit's realigners do for each buffer, rather than from thousands of device pins or
    harness bits; one register shared by all of them would be a bus to every buffer of the unit
    at once); every other member of the unit is a member of this top under the same name
    (``load`` becomes ``load__valid`` and ``load__ready``, and so on)."""

    def __init__(self, unit: wiring.Component, *, width: int = 128, narrow: int = 64):
        self.unit, self.width, self.narrow = unit, width, narrow
        members = {"beat": In(width), "beat_valid": In(1)}
        self._wide = []            # (path, value) driven from the shift register
        self._pass = []            # (name, flow, value)
        for path, member, value in unit.signature.flatten(unit):
            name = "__".join(str(p) for p in path)
            if member.flow == In and len(Value.cast(value)) > narrow:
                self._wide.append(value)
            else:
                members[name] = (In if member.flow == In else Out)(member.shape)
                self._pass.append((name, member.flow, value))
        self.wide_bits = max((len(Value.cast(v)) for v in self._wide), default=1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        for k, value in enumerate(self._wide):
            bits = len(Value.cast(value))
            sr = Signal(max(bits, self.width), name=f"sr{k}")
            # register k takes the beat rotated by 7k bits: registers fed the same bits would be
            # merged into one by the synthesis tools (equal flip-flops), undoing the point
            beat = self.beat.rotate_left(7 * k % self.width)
            with m.If(self.beat_valid):
                m.d.sync += sr.eq(Cat(sr[self.width:], beat))
            m.d.comb += value.eq(sr[:bits])
        for name, flow, value in self._pass:
            mine = getattr(self, name)
            if flow == In:
                m.d.comb += value.eq(mine)
            else:
                m.d.comb += mine.eq(value)
        return m


def _topk(cfg: Config):
    from .topk import TopK

    return TopK(config=cfg.topk)


def _attention(cfg: Config):
    from .attention import Attention

    return Attention(config=cfg.attention)


def _core(cfg: Config):
    from .core import Core

    # three query heads per K/V head, as in SmolLM2 (MiniLM uses one)
    return Core(config=cfg, group=3)


def _attention_fed(cfg: Config):
    # the pipeline with its buffer writes, load words and queries filled 128 bits a cycle
    return Fed(_attention(cfg))


TOPS = {
    "topk": _topk,
    "attention": _attention,
    "attention_fed": _attention_fed,
    "core": _core,
}


def make_top(name: str, cfg: Config):
    """The unit `name` built for `cfg`; a clear error lists the names that exist."""
    try:
        factory = TOPS[name]
    except KeyError:
        raise ValueError(f"unknown top {name!r}; choose one of: {', '.join(TOPS)}") from None
    return factory(cfg)
