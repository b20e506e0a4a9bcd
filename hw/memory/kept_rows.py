"""The V rows a query's kept keys still need (`KeptRows`)."""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from ..common.rowstream import row_layout
from .fetch import run_layout
from .job_slots import check_config
from .scan import Coalescer

__all__ = ["KeptRows", "RESIDENT_CHECK_LATENCY"]

#: cycles from a ``kept`` beat whose lanes are all resident being presented to its transfer
RESIDENT_CHECK_LATENCY = 0


class KeptRows(wiring.Component):
    """Each final pass's kept keys -> runs of the V rows not yet in the V buffer.

    ``resident`` keeps one bit per buffer position: the position's V row is in the V buffer, or
    on its way. ``clear`` (with ``clear_banks``, a job's buffer halves as in
    `hw.memory.job_slots.slot_layout`) clears a newly admitted job's positions; ``mark`` sets
    position ``mark_position`` (a prefetch scan took it); both take effect at the next edge, and a
    mark wins over a clear in the same cycle.

    ``kept`` (the pipeline's kept positions of the running job, a query's beats up to ``last``,
    positions relative to its first position ``first``) is taken beat by beat: a beat whose
    positions are all resident is taken at once (`RESIDENT_CHECK_LATENCY`), otherwise one
    lane a cycle; each missing position is marked and its token is read from the index buffer
    (``rd_addr``/``rd_data``, a synchronous read port, always enabled) into a `Coalescer`
    whose runs of consecutive tokens leave on ``runs``. After the query's last beat its open run
    closes; when every run of the query is in the reader and written (``runs_in_flight`` low)
    and the job's prefetch is not pending (``prefetch_pending``), ``done`` pulses (the
    pipeline's ``v_done``). ``busy``: a query's rows are being looked up or fetched.
    """

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        att, token_bits = config.attention, config.memory.token_bits
        N = att.capacity
        super().__init__({
            "kept": In(stream.Signature(row_layout(unsigned(att.index_width),
                                                   att.softmax_lanes))),
            "first": In(range(N)),
            "rd_addr": Out(range(N)),
            "rd_data": In(unsigned(token_bits)),
            "runs": Out(stream.Signature(run_layout(token_bits, N))),
            "runs_in_flight": In(1),
            "prefetch_pending": In(1),
            "done": Out(1),
            "busy": Out(1),
            "clear": In(1),
            "clear_banks": In(2),
            "mark": In(1),
            "mark_position": In(range(N)),
        })

    def elaborate(self, platform):
        m = Module()
        att = self.config.attention
        N, S = att.capacity, att.softmax_lanes
        m.submodules.runs = runs = Coalescer(token_bits=self.config.memory.token_bits,
                                             capacity=N)
        wiring.connect(m, runs.o, wiring.flipped(self.runs))

        resident = Signal(N)
        # a newly admitted job's positions: none of its V rows is in the buffer yet
        lower = Const((1 << (N // 2)) - 1, N)
        with m.If(self.clear):
            with m.If(self.clear_banks == 0b11):
                m.d.sync += resident.eq(0)
            with m.Elif(self.clear_banks == 0b01):
                m.d.sync += resident.eq(resident & ~lower)
            with m.Elif(self.clear_banks == 0b10):
                m.d.sync += resident.eq(resident & lower)
        with m.If(self.mark):
            m.d.sync += resident.bit_select(self.mark_position, 1).eq(1)

        beat = self.kept.payload
        first = self.first
        lane = Signal(range(S + 1))         # the lane of the beat looked at
        read_valid = Signal()               # a missing row's token is read, for the coalescer
        read_position = Signal(range(N))
        query_end = Signal()                # the query's kept beats are all taken
        position = Signal(range(N))
        m.d.comb += position.eq(Array(beat.data[j] for j in range(S))[lane])
        lane_used = Signal()
        m.d.comb += lane_used.eq(lane < beat.count)
        missing = Signal()
        m.d.comb += missing.eq(lane_used & ~resident.bit_select(first + position, 1))
        all_resident = Signal()             # every lane of the beat resident: one cycle
        m.d.comb += all_resident.eq(Cat((beat.count <= j)
                                        | resident.bit_select(first + beat.data[j], 1)
                                        for j in range(S)).all())
        hold = Signal()
        m.d.comb += [hold.eq(read_valid & ~runs.i.ready),
                     self.rd_addr.eq(first + Mux(hold, read_position, position)),
                     runs.i.valid.eq(read_valid), runs.i.payload.token.eq(self.rd_data),
                     runs.i.payload.pos.eq(read_position), runs.i.payload.last.eq(0)]
        with m.If(runs.i.valid & runs.i.ready):
            m.d.sync += read_valid.eq(0)
        with m.If(self.kept.valid & ~query_end & ~hold):
            with m.If(((lane == 0) & all_resident) | ~lane_used):
                m.d.comb += self.kept.ready.eq(1)
                m.d.sync += [lane.eq(0), query_end.eq(beat.last)]
            with m.Else():
                with m.If(missing):
                    m.d.sync += [read_valid.eq(1), read_position.eq(position),
                                 resident.bit_select(first + position, 1).eq(1)]
                m.d.sync += lane.eq(lane + 1)
        # the query's last missing row closes its run; its rows in (and the job's prefetch
        # done), the query may go on
        m.d.comb += runs.flush.eq(query_end & ~read_valid)
        with m.If(query_end & ~read_valid & ~runs.busy & ~self.runs_in_flight
                  & ~self.prefetch_pending):
            m.d.comb += self.done.eq(1)
            m.d.sync += query_end.eq(0)
        m.d.comb += self.busy.eq(runs.busy | read_valid | query_end)
        return m

