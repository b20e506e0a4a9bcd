"""What the unit testbenches of the attention datapath share (`sim/tb_qk.py`, `sim/tb_pv.py`,
`sim/tb_softmax.py`, and their tests).

Design: `BufferedUnitTop`, the base of a test top holding a unit, the buffer the unit reads (a
`lib.memory.Memory`) and a ``load`` stream that writes the buffer.

Stimuli: `words_of` (a flat buffer image as memory words), `lane_beats` (a row as beats of a fixed
number of lanes), `random_elements` (seeded buffer contents, extremes included), `pick_seed` (the
seed of a randomized pytest test), `unit_test` (one cocotb run of a top under a config).

cocotb (the tops build without it: ``cocotb`` here is None when it is not installed, and a
testbench defines its tests only when it is not): `tb_config` (the run's settings), `UnitBench`
(drivers, monitors, reset, a batch sent and its results collected under a hang limit, the idle
checks after a batch), `report`.
"""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from ..infra.testbench import cfg_tag, tb_settings, unit_selftest

try:
    import cocotb
except ImportError:  # pragma: no cover - cocotb is a dependency
    cocotb = None
else:
    from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
    from cocotb.utils import get_sim_time

    from ..infra.streams import StreamSink, StreamSource, clock_and_reset

__all__ = ["BufferedUnitTop", "words_of", "lane_beats", "random_elements", "pick_seed",
           "unit_test", "cocotb", "PERIOD", "tb_config", "report", "cycle_now", "UnitBench"]


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


def pick_seed() -> int:
    """The seed of a randomized test: SPATTEN_SEED when set, else a fresh one; printed (pytest
    shows it with a failure)."""
    s = int(os.environ.get("SPATTEN_SEED", random.randrange(1 << 32)))
    print(f"seed={s}")
    return s


def unit_test(make_top, cfg, *, name: str, tb_module: str, tag: str | None = None,
              sim: str = "verilator", testcase=None, **settings):
    """`unit_selftest` of `make_top()` as Verilog module `name` (build folder tag: `tag`, by
    default the config's), with the settings {config: the fields of `cfg`, **settings}."""
    return unit_selftest(make_top, name=name, tag=tag or cfg_tag(cfg), tb_module=tb_module,
                         settings={"config": dataclasses.asdict(cfg), **settings}, sim=sim,
                         testcase=testcase)


# ---------------------------------------------------------------------------------- cocotb
PERIOD = 10.0   # ns: the clock of every unit testbench


def tb_config(**defaults) -> tuple:
    """(AttentionConfig, seed, settings) of the running testbench: the settings `unit_selftest`
    passed, over `defaults` (seed 1 and the default config when absent)."""
    settings = {**defaults, **tb_settings()}
    return AttentionConfig(**settings.get("config", {})), int(settings.get("seed", 1)), settings


def report(dut, seed: int, errs: list[str], what: str) -> None:
    """Log what was checked; fail the cocotb test with the first problems found."""
    dut._log.info("seed %d: %s", seed, what)
    assert not errs, f"seed {seed}: {len(errs)} problems, first: " + "; ".join(errs[:5])


def cycle_now() -> int:
    """The current clock cycle (sim time in periods)."""
    return round(get_sim_time("ns") / PERIOD)


class UnitBench:
    """The cocotb side of a unit testbench.

    `src` drives the input stream ``src = (port, layout)`` with random idle cycles (probability
    `idle`), `sink` takes the output stream `sink` under random backpressure (probability
    `stall`; it checks the stream rules and calls `on_sink` with each beat), `load` (when given
    its layout) writes the unit's buffer. Their random sources derive from `seed` (+1, +2).

    A subclass sets `INPUTS` ({port: value} driven before reset) and makes its bench with
    ``await Subclass.start(dut, **its keywords)``; `outputs` lists the streams that must be
    idle after a batch (add any further sink's).
    """

    INPUTS: dict = {}

    def __init__(self, dut, src: tuple, sink: tuple, *, idle=0.0, stall=0.0, seed=1, load=None,
                 on_sink=None):
        self.dut = dut
        if load is not None:
            self.load = StreamSource(dut, "load", dut.clk, load)
            self._framed = _framed(load)
        self.src = StreamSource(dut, src[0], dut.clk, src[1], idle_prob=idle,
                                rng=random.Random(seed + 1))
        self.sink = StreamSink(dut, sink[0], dut.clk, sink[1], stall_prob=stall,
                               rng=random.Random(seed + 2), callback=on_sink)
        self.outputs = [sink[0]]
        self._mon = None

    @classmethod
    async def start(cls, dut, **kw):
        """Drive `INPUTS`, start the clock, reset; then the bench (`kw` go to the constructor)."""
        for name, value in cls.INPUTS.items():
            getattr(dut, name).value = value
        await clock_and_reset(dut, PERIOD)
        return cls(dut, **kw)

    async def fill(self, words) -> None:
        """Write `words` into the buffer from address 0 through ``load`` (framed: the last beat
        has last = 1); returns after the next clock edge."""
        if self._framed:
            words = [{"data": w, "last": int(k == len(words) - 1)} for k, w in enumerate(words)]
        await self.load.send(words)
        await RisingEdge(self.dut.clk)

    def log_transfers(self, *streams: str) -> dict:
        """From now until `settle`: {stream: the cycle of every transfer on it}."""
        log = {name: [] for name in streams}
        self._mon = cocotb.start_soon(self._monitor(log))
        return log

    async def _monitor(self, log):
        dut = self.dut
        edge, settled = RisingEdge(dut.clk), ReadOnly()
        ports = [(getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready"), cycles)
                 for name, cycles in log.items()]
        while True:
            await settled
            for valid, ready, cycles in ports:
                if valid.value == 1 and ready.value == 1:
                    cycles.append(cycle_now() + 1)      # the transfer is at the next edge
            await edge

    async def exchange(self, beats, recv, count: int, limit: int) -> list:
        """Queue `beats` on `src`, then collect `count` results of `recv()` (e.g.
        ``self.sink.recv_packet``) in order; fewer when one has not come within `limit` cycles
        of the previous one (a hang)."""
        self.src.send_nowait(beats)
        got = []
        for _ in range(count):
            task = cocotb.start_soon(recv())
            waited = 0
            while not task.done():
                await ClockCycles(self.dut.clk, 16)
                waited += 16
                if waited > limit:
                    task.cancel()
                    return got
            got.append(task.result())
        return got

    async def settle(self, macs: tuple | None = None) -> list[str]:
        """After a batch: wait until `src` has sent everything and 2 more cycles; then (settled)
        stop the transfer log and check that no stream of `outputs` holds a beat and, with
        `macs` = (``macs`` at the batch's start, its expected increase), that ``busy`` is low and
        ``macs`` rose by that much. Returns the problems found, after the next clock edge."""
        dut = self.dut
        await self.src.wait_idle()
        await ClockCycles(dut.clk, 2)
        await ReadOnly()
        if self._mon is not None:
            self._mon.cancel()
            self._mon = None
        errs = []
        if macs is not None and int(dut.busy.value):
            errs.append("busy after the last beat")
        if any(int(getattr(dut, f"{name}__valid").value) for name in self.outputs):
            errs.append("an extra output beat")
        if macs is not None:
            got = (int(dut.macs.value) - macs[0]) % (1 << 32)
            if got != macs[1]:
                errs.append(f"macs {got} != {macs[1]}")
        await RisingEdge(dut.clk)
        return errs
