"""The running job: the core's back end between its job slots and the query pipeline
(`JobRunner`)."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from ..attention.attention import output_layout, query_layout
from .job_slots import CoreError, RowsState, SlotState, check_config, slot_layout
from .query_rows import q_row_layout

__all__ = ["JobRunner", "ERROR_BEAT_LATENCY"]

#: cycles from a BAD job at the run slot whose queries are all dropped to its error beat on ``o``
ERROR_BEAT_LATENCY = 1


class JobRunner(wiring.Component):
    """Runs the jobs of the run slot (``slot``, `hw.memory.job_slots.JobSlots.running`, number
    ``slot_index``) through the pipeline, one after the other.

    A READY job starts (``run_start``): its fetched Q rows (``rows``, from `QueryRows`, those of
    its slot) go to the pipeline's ``q``, and the pipeline's outputs (``results``) to ``o`` until
    the job's last one. A BAD job's Q rows are dropped; when its last query is taken, none of its
    rows is left in the ring nor being requested (``rows_empty``, ``rows_requesting``) and its
    scans are over, its error beat (``error = last = 1``) goes out on ``o``
    (`ERROR_BEAT_LATENCY`). After a job's last beat, once no scan of its slot is pending, the
    slot is freed (``release``). ``want_lsb`` pulses when the pipeline asks for the K LSB rows
    (``lsb_needed``) of a job that has not asked yet.

    Status: ``jobs_done``, ``error`` and ``error_code`` (of the last job ended: the pipeline's
    own error is ATTENTION), and the memory waits (counters since reset): ``wait_k`` (the
    pipeline is idle, the run slot's job is still in its intake), ``wait_q`` (the pipeline would
    take a query whose row is not fetched or not sent), ``wait_lsb`` (``lsb_needed``),
    ``wait_v`` (``v_stall``).
    """

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        att = config.attention
        super().__init__({
            "slot": In(slot_layout(config)),
            "slot_index": In(1),
            "run_start": Out(1),
            "release": Out(1),
            "want_lsb": Out(1),
            "rows": In(stream.Signature(q_row_layout(config))),
            "rows_empty": In(1),
            "rows_requesting": In(1),
            "q": Out(stream.Signature(query_layout(att))),
            "results": In(stream.Signature(output_layout(att))),
            "o": Out(stream.Signature(output_layout(att))),
            "lsb_needed": In(1),
            "v_stall": In(1),
            "jobs_done": Out(32),
            "error": Out(1),
            "error_code": Out(CoreError),
            "wait_k": Out(32),
            "wait_q": Out(32),
            "wait_lsb": Out(32),
            "wait_v": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        slot, rows, o = self.slot, self.rows, self.o
        state = slot.state
        with m.If(self.lsb_needed & (slot.lsb == RowsState.NOT_WANTED)):
            m.d.comb += self.want_lsb.eq(1)
        jobs_done, error, code = self.jobs_done, self.error, self.error_code
        scans_idle = Signal()             # no scan of the job's slot is pending
        m.d.comb += scans_idle.eq((slot.lsb != RowsState.WANTED)
                                  & (slot.v_prefetch != RowsState.WANTED))
        mine = Signal()                   # the row at the ring's head is the job's
        m.d.comb += [mine.eq(rows.payload.slot == self.slot_index),
                     self.q.payload.data.eq(rows.payload.data),
                     self.q.payload.last.eq(rows.payload.last)]
        # no row of the job is left: the ring has none at its head
        rows_gone = (self.rows_empty | ~mine)
        with m.FSM(name="run"):
            with m.State("IDLE"):
                with m.If(state == SlotState.READY):
                    m.d.comb += self.run_start.eq(1)
                    m.next = "RUN"
                with m.Elif(state == SlotState.BAD):
                    # Q rows fetched for it are dropped; then its error beat
                    m.d.comb += rows.ready.eq(mine)
                    with m.If(slot.queries_taken & scans_idle & ~self.rows_requesting
                              & rows_gone):
                        m.next = "ERROR"
                with m.Elif(state == SlotState.INTAKE):
                    m.d.sync += self.wait_k.eq(self.wait_k + 1)
            with m.State("RUN"):
                m.d.comb += [self.q.valid.eq(rows.valid & mine),
                             rows.ready.eq(self.q.ready & mine)]
                with m.If(self.q.ready & ~self.q.valid & ~(slot.queries_taken & rows_gone)):
                    m.d.sync += self.wait_q.eq(self.wait_q + 1)
                with m.If(self.lsb_needed):
                    m.d.sync += self.wait_lsb.eq(self.wait_lsb + 1)
                with m.If(self.v_stall):
                    m.d.sync += self.wait_v.eq(self.wait_v + 1)
                wiring.connect(m, wiring.flipped(self.results), wiring.flipped(o))
                with m.If(o.valid & o.ready & o.payload.last):
                    m.d.sync += [jobs_done.eq(jobs_done + 1),
                                 error.eq(slot.error | o.payload.error),
                                 code.eq(Mux(o.payload.error, CoreError.ATTENTION, slot.code))]
                    m.next = "FREE"
            with m.State("ERROR"):
                m.d.comb += [o.valid.eq(1), o.payload.error.eq(1), o.payload.last.eq(1)]
                with m.If(o.ready):
                    m.d.sync += [jobs_done.eq(jobs_done + 1), error.eq(1), code.eq(slot.code)]
                    m.next = "FREE"
            with m.State("FREE"):
                # the slot and its banks are free once no scan of it is running
                with m.If(scans_idle):
                    m.d.comb += self.release.eq(1)
                    m.next = "IDLE"
        return m
