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
    (``q`` becomes ``q__valid`` and ``q__ready``, and so on).

    ``unused`` names top-level members of the unit that its real surroundings leave idle: their
    inputs stay at their reset values (a stream's ``valid`` at 0, so the synthesis tools remove
    what only they would drive) and their outputs are not connected."""

    def __init__(self, unit: wiring.Component, *, width: int = 128, narrow: int = 64,
                 unused: tuple = ()):
        names = {str(path[0]) for path, _, _ in unit.signature.flatten(unit)}
        if isinstance(unused, str) or not set(unused) <= names:
            self._MustUse__silence = True      # refused: never to be elaborated
            raise ValueError(f"unused must be a tuple of the unit's member names "
                             f"({', '.join(sorted(names))}), not {unused!r}")
        self.unit, self.width, self.narrow, self.unused = unit, width, narrow, tuple(unused)
        members = {"beat": In(width), "beat_valid": In(1)}
        self._wide = []            # (path, value) driven from the shift register
        self._pass = []            # (name, flow, value)
        for path, member, value in unit.signature.flatten(unit):
            name = "__".join(str(p) for p in path)
            if str(path[0]) in self.unused:
                continue
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
    from .topk.topk import TopK

    return TopK(config=cfg.topk)


def _attention(cfg: Config):
    from .attention.attention import Attention

    return Attention(config=cfg.attention)


def _core(cfg: Config):
    from .memory.core import Core

    # memory.group_size query heads per K/V head (3 by default, as in SmolLM2)
    return Core(config=cfg)


def _attention_fed(cfg: Config):
    # The pipeline as `hw.memory.core.Core` drives it: the buffer writes of the memory side (K MSB,
    # K LSB and V rows) and the queries filled 128 bits a cycle. `load`, the standalone
    # pipeline's own loader of the same buffers, is idle in the Core; fed as well, it was a
    # second 768-bit write path to every K and V block RAM (17 % of router2's early congestion).
    return Fed(_attention(cfg), unused=("load",))


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
