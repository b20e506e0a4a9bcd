"""Two sources of runs into one plane reader (`RunMerge`): the core's V reader takes the running
job's missing rows and the next job's prefetch."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from ..attention.attention import run_registers
from .fetch import run_layout
from .job_slots import check_config

__all__ = ["RunMerge", "RUNS_IN_FLIGHT"]

#: runs the merge keeps track of in the reader (accepted by it, not yet written)
RUNS_IN_FLIGHT = 8


class RunMerge(wiring.Component):
    """Runs from ``demand`` and ``prefetch`` onto one `hw.memory.fetch.PlaneReader` (``cmd``,
    ``base``, ``d_log2``, ``done``), each with its plane (``*_base``, ``*_d_log2``) and its buffer
    half (``*_upper``).

    ``demand`` goes first: a prefetch run is offered only while no demand run is; once offered
    to the reader, a run stays until it is taken. Each run taken is remembered in order (up to
    `RUNS_IN_FLIGHT`, no run is offered while they are all in the reader); ``write_upper`` is
    the half of the run the reader now writes, and ``demand_in_flight``/``prefetch_in_flight``
    say that runs of that source are in the reader (taken, their ``done`` not yet seen).
    Latency: none (a run passes to the reader in the cycle it is offered)."""

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        mem, att = config.memory, config.attention
        runs = stream.Signature(run_layout(mem.token_bits, att.capacity))
        d_log2 = run_registers(att)["d_log2"].shape      # a job's
        super().__init__({
            "demand": In(runs),
            "demand_base": In(mem.addr_width),
            "demand_d_log2": In(d_log2),
            "demand_upper": In(1),
            "prefetch": In(runs),
            "prefetch_base": In(mem.addr_width),
            "prefetch_d_log2": In(d_log2),
            "prefetch_upper": In(1),
            "cmd": Out(runs),
            "base": Out(mem.addr_width),
            "d_log2": Out(d_log2),
            "done": In(1),
            "write_upper": Out(1),
            "demand_in_flight": Out(1),
            "prefetch_in_flight": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        # one entry per run in the reader: {source (1: prefetch), upper half}
        m.submodules.tags = tags = SyncFIFO(width=2, depth=RUNS_IN_FLIGHT)
        demand_runs = Signal(range(RUNS_IN_FLIGHT + 1))
        prefetch_runs = Signal(range(RUNS_IN_FLIGHT + 1))
        locked = Signal()                 # a run was offered and not taken: it stays
        locked_source = Signal()
        source = Signal()                 # 1: the prefetch run
        m.d.comb += source.eq(Mux(locked, locked_source, ~self.demand.valid))
        valid = Mux(source, self.prefetch.valid, self.demand.valid)
        cmd = self.cmd
        m.d.comb += [cmd.valid.eq(valid & tags.w_rdy),
                     cmd.payload.eq(Mux(source, self.prefetch.payload, self.demand.payload)),
                     self.demand.ready.eq(~source & cmd.ready & tags.w_rdy),
                     self.prefetch.ready.eq(source & cmd.ready & tags.w_rdy),
                     self.base.eq(Mux(source, self.prefetch_base, self.demand_base)),
                     self.d_log2.eq(Mux(source, self.prefetch_d_log2, self.demand_d_log2)),
                     tags.w_data.eq(Cat(source, Mux(source, self.prefetch_upper,
                                                    self.demand_upper)))]
        m.d.sync += [locked.eq(cmd.valid & ~cmd.ready), locked_source.eq(source)]
        taken = Signal()
        m.d.comb += [taken.eq(cmd.valid & cmd.ready), tags.w_en.eq(taken),
                     tags.r_en.eq(self.done)]
        done_prefetch = tags.r_data[0]
        m.d.sync += [
            demand_runs.eq(demand_runs + (taken & ~source) - (self.done & ~done_prefetch)),
            prefetch_runs.eq(prefetch_runs + (taken & source) - (self.done & done_prefetch))]
        m.d.comb += [self.write_upper.eq(tags.r_data[1]),
                     self.demand_in_flight.eq(demand_runs != 0),
                     self.prefetch_in_flight.eq(prefetch_runs != 0)]
        return m
