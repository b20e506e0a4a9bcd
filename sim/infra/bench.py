"""The cocotb side of a unit's testbench: the bench every `tb_<unit>.py` builds on.

`UnitBench` owns the stream drivers (`StreamSource`, random idle cycles) and monitors
(`StreamSink`, random backpressure, the stream rules checked on every stalled beat) of one test,
drives the design's inputs and resets it (`start`, `reset`), sends a batch and collects its
results under a hang limit (`exchange`), logs transfer cycles (`log_transfers`) and checks that
everything is idle after a batch (`settle`). `tb_config` gives the running testbench its
configuration, seed and settings (from `spatten.sim.infra.testbench.run_testbench`), `report`
ends a test with the problems found.

Imported inside the simulator only (it imports cocotb), by the testbenches.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from spatten.config import AttentionConfig

from .streams import StreamSink, StreamSource, clock_and_reset
from .testbench import DEFAULT_SEED, tb_settings

__all__ = ["PERIOD", "tb_config", "report", "cycle_now", "UnitBench"]

PERIOD = 10.0   # ns: the clock of every unit testbench


def tb_config(config_class=AttentionConfig, **defaults) -> tuple:
    """(config, seed, settings) of the running testbench: the settings `run_testbench` passed
    over `defaults`; the config is `config_class` of the settings' ``config`` fields (its
    defaults when absent), the seed `DEFAULT_SEED` when absent."""
    settings = {**defaults, **tb_settings()}
    return (config_class(**settings.get("config", {})),
            int(settings.get("seed", DEFAULT_SEED)), settings)


def report(dut, seed: int, errs: list[str], what: str) -> None:
    """Log what was checked; fail the cocotb test with the first problems found."""
    dut._log.info("seed %d: %s", seed, what)
    assert not errs, f"seed {seed}: {len(errs)} problems, first: " + "; ".join(errs[:5])


def cycle_now() -> int:
    """The current clock cycle (sim time in periods)."""
    return round(get_sim_time("ns") / PERIOD)


class UnitBench:
    """The streams of one cocotb test of a unit, and what every test does with them.

    With `src` = (port, layout) it drives that input stream as `self.src` with random idle
    cycles (probability `idle`); with `sink` = (port, layout) it takes that output stream as
    `self.sink` under random backpressure (probability `stall`), calling `on_sink` with each beat;
    with `load` (a layout) it drives the unit's buffer-write stream ``load`` as `self.load`.
    Their random sources are ``random.Random(seed + offset)`` with the offsets of `RNG_OFFSETS`
    (source, sink). A bench with more streams adds them with `add_source` / `add_sink`.

    A subclass sets `INPUTS` ({port: value} driven before reset) and makes its bench with
    ``await Subclass.start(dut, **its keywords)``; every sink's stream must be idle after a batch
    (`settle`).
    """

    INPUTS: dict = {}
    RNG_OFFSETS = (1, 2)

    def __init__(self, dut, src: tuple | None = None, sink: tuple | None = None, *, idle=0.0,
                 stall=0.0, seed=DEFAULT_SEED, load=None, on_sink=None):
        self.dut = dut
        self.sources: list[StreamSource] = []
        self.sinks: dict[str, StreamSink] = {}
        self._mon = None
        if load is not None:
            self.load = self.add_source("load", load)
            self._framed = "last" in getattr(load, "members", {})   # {data, last} beats
        if src is not None:
            self.src = self.add_source(src[0], src[1], idle=idle,
                                       rng=random.Random(seed + self.RNG_OFFSETS[0]))
        if sink is not None:
            self.sink = self.add_sink(sink[0], sink[1], stall=stall,
                                      rng=random.Random(seed + self.RNG_OFFSETS[1]),
                                      callback=on_sink)

    def add_source(self, port: str, layout, *, idle=0.0, rng=None) -> StreamSource:
        """A driver of input stream `port` (idle cycles with probability `idle`)."""
        source = StreamSource(self.dut, port, self.dut.clk, layout, idle_prob=idle, rng=rng)
        self.sources.append(source)
        return source

    def add_sink(self, port: str, layout, *, stall=0.0, rng=None, callback=None) -> StreamSink:
        """A monitor of output stream `port` (backpressure with probability `stall`)."""
        sink = StreamSink(self.dut, port, self.dut.clk, layout, stall_prob=stall, rng=rng,
                          callback=callback, period_ns=PERIOD)
        self.sinks[port] = sink
        return sink

    @classmethod
    async def start(cls, dut, **kw):
        """Drive `INPUTS`, start the clock, reset; then the bench (`kw` go to the constructor)."""
        for name, value in cls.INPUTS.items():
            getattr(dut, name).value = value
        await clock_and_reset(dut, PERIOD)
        return cls(dut, **kw)

    def retune(self, idle: float, stall: float) -> None:
        """New probabilities of idle cycles on `src` and of backpressure on `sink`."""
        self.src.idle_prob, self.sink.stall_prob = idle, stall

    async def reset(self, cycles: int = 2) -> None:
        """Stop every stream of this bench (sources' valid low), hold ``rst`` high for `cycles`
        cycles; returns after the first edge with reset low. Make a new bench to go on."""
        dut = self.dut
        self.stop()
        for source in self.sources:
            source.valid.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, cycles)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    def stop(self) -> None:
        """Stop every driver and monitor of this bench."""
        for stream in (*self.sources, *self.sinks.values()):
            stream.stop()

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
        stop the transfer log and check that no sink's stream holds a beat and, with `macs` =
        (``macs`` at the batch's start, its expected increase), that ``busy`` is low and ``macs``
        rose by that much. Returns the problems found, after the next clock edge."""
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
        if any(int(getattr(dut, f"{name}__valid").value) for name in self.sinks):
            errs.append("an extra output beat")
        if macs is not None:
            got = (int(dut.macs.value) - macs[0]) % (1 << 32)
            if got != macs[1]:
                errs.append(f"macs {got} != {macs[1]}")
        await RisingEdge(dut.clk)
        return errs
