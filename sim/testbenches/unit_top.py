"""What the simulation tops and stimuli of the attention datapath's testbenches share
(`tb_qk.py`, `tb_pv.py`, `tb_softmax.py`, `tb_topk.py`, and their tests).

Design: `BufferedUnitTop`, the base of a test top holding a unit, the buffer the unit reads (a
`lib.memory.Memory`) and a ``load`` stream that writes the buffer.

Stimuli: `words_of` (a flat buffer image as memory words), `lane_beats` (a row as beats of a fixed
number of lanes), `random_elements` (seeded buffer contents, extremes included).

The bench itself (drivers, monitors, reset, batches, idle checks) is `spatten.sim.infra.bench`;
running it from pytest is `spatten.sim.infra.testbench`.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

__all__ = ["BufferedUnitTop", "words_of", "lane_beats", "random_elements"]


def _framed(shape) -> bool:
    """A load payload {data, last} (rather than the bare word)."""
    return isinstance(shape, data.StructLayout) and "last" in shape.members


class BufferedUnitTop(wiring.Component):
    """A unit with the buffer it reads and a ``load`` stream into the buffer.

    unit    the unit: a component with a read port `rd` (``In(ReadPort.Signature(...))``),
            ``busy`` and ``macs`` outputs and ``depth`` (its buffer's words); submodule `name`
    ports   the top's other ports, which the subclass wires to the unit in `connect(m)`
    mem     the buffer's name; init: its initial words
    framed  the ``load`` payload is {data: word, last: 1} rather than the word

    Ports, in this order:
        load : In(stream.Signature(word or {data: word, last: 1}))   always ready; one word per
               beat, written at consecutive addresses from 0; the address returns to 0 after the
               buffer's last word, after a beat with last = 1 (framed) and in a cycle in which
               `restart()` is high (so the next load starts at word 0)
        <ports>
        busy : Out(1), macs : Out(32)   those of the unit
    """

    def __init__(self, unit, ports: dict, *, name: str, rd: str, mem: str, init=None,
                 framed: bool = False):
        self.unit, self._names = unit, (name, rd, mem)
        self.init = [] if init is None else list(init)
        self._word = word = unit.signature.members[rd].signature.shape
        load = data.StructLayout({"data": word, "last": 1}) if framed else word
        super().__init__({"load": In(stream.Signature(load)), **ports, "busy": Out(1),
                          "macs": Out(32)})

    def restart(self):
        """A 1-bit value that returns the load address to 0 (None: never)."""
        return None

    def connect(self, m: Module) -> None:
        """Wire the top's other ports to the unit."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        name, rd, mem_name = self._names
        unit, load, depth = self.unit, self.load, self.unit.depth
        m.submodules[name] = unit
        m.submodules[mem_name] = mem = Memory(shape=self._word, depth=depth, init=self.init)
        wr = mem.write_port()
        wiring.connect(m, getattr(unit, rd), mem.read_port())
        waddr = Signal(range(depth))
        framed = _framed(load.payload.shape())
        m.d.comb += [
            load.ready.eq(1),
            wr.en.eq(load.valid),
            wr.addr.eq(waddr),
            wr.data.eq(load.payload.data if framed else load.payload),
        ]
        wrap = waddr == depth - 1
        with m.If(load.valid):
            m.d.sync += waddr.eq(Mux((load.payload.last | wrap) if framed else wrap, 0, waddr + 1))
        restart = self.restart()
        if restart is not None:
            with m.If(restart):
                m.d.sync += waddr.eq(0)
        m.d.comb += [self.busy.eq(unit.busy), self.macs.eq(unit.macs)]
        self.connect(m)
        return m


# ---------------------------------------------------------------------------------- stimuli
def words_of(flat, width: int) -> list[list[int]]:
    """Flat elements as memory words of `width` elements (the last one zero-padded): word w
    holds elements [w*width, (w+1)*width)."""
    flat = np.asarray(flat, dtype=np.int64).reshape(-1)
    words = -(-flat.size // width)
    flat = np.concatenate([flat, np.zeros(words * width - flat.size, dtype=np.int64)])
    return [[int(x) for x in flat[w * width:(w + 1) * width]] for w in range(words)]


def lane_beats(values, lanes: int) -> list[dict]:
    """A row as {data, count, last} beats of `lanes` lanes (lanes >= count are 0)."""
    values = [int(x) for x in values]
    out = []
    for lo in range(0, len(values), lanes):
        chunk = values[lo:lo + lanes]
        out.append({"data": chunk + [0] * (lanes - len(chunk)), "count": len(chunk),
                    "last": int(lo + lanes >= len(values))})
    return out


def random_elements(cfg: AttentionConfig, rng: np.random.Generator | None, size: int,
                    kind: str = "uniform") -> np.ndarray:
    """`size` data elements of `kind`: uniform in [data_min, data_max], all min, all max, or
    mixed (min, max, 0, -1, 1); `rng` may be None for min and max."""
    lo, hi = cfg.data_min, cfg.data_max
    if kind == "min":
        return np.full(size, lo)
    if kind == "max":
        return np.full(size, hi)
    if kind == "mixed":
        return rng.choice([lo, hi, 0, -1, 1], size)
    return rng.integers(lo, hi + 1, size)
