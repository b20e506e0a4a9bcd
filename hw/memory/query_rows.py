"""Queries -> Q rows fetched ahead of the pipeline (`QueryRows`)."""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from .fetch import run_layout, write_layout
from .job_slots import SlotState, check_config, query_cmd_layout, slot_layout

__all__ = ["QueryRows", "q_row_layout", "ROW_READY_LATENCY"]

#: cycles from the reader's ``done`` for the row at the head of the ring to it on ``rows``
ROW_READY_LATENCY = 1


def q_row_layout(config: Config) -> data.StructLayout:
    """A fetched Q row: M elements (d used), the job's last query, and the slot of its job."""
    att = config.attention
    return data.StructLayout({"data": data.ArrayLayout(signed(att.data_width), att.qk_mults),
                              "last": 1, "slot": 1})


class QueryRows(wiring.Component):
    """A ring of ``memory.q_slots`` Q rows, fetched ahead of the pipeline.

    ``queries`` of the query slot's job (``slot``, `hw.memory.job_slots.JobSlots.querying`, number
    ``slot_index``) are taken as soon as its descriptor is in and a ring slot is free (none is
    in flight to the reader): each one's row, one run of one row of its head's Q plane, goes to
    the reader (``cmd``, ``base``, ``d_log2``; the reader's writes on ``wr`` fill the ring slot,
    placed at lanes 0 .. d-1 of its word; ``done`` marks the oldest run in). A query of a head
    outside the group is fetched as head 0 and ``bad_head`` pulses; ``queries_taken`` pulses
    with the job's last query. The queries of a refused job are taken and dropped.

    ``rows`` gives the ring's rows in order, each with its job's slot, once fetched
    (`ROW_READY_LATENCY`); the consumer takes the running job's rows and drops those of a job
    that went bad. ``empty``: no row in the ring; ``requesting``: a run waits for the reader.
    """

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        att, mem = config.attention, config.memory
        M, N = att.qk_mults, att.capacity
        super().__init__({
            "queries": In(stream.Signature(query_cmd_layout(config))),
            "slot": In(slot_layout(config)),
            "slot_index": In(1),
            "queries_taken": Out(1),
            "bad_head": Out(1),
            "cmd": Out(stream.Signature(run_layout(mem.token_bits, N))),
            "base": Out(mem.addr_width),
            "d_log2": Out(range(M.bit_length())),
            "wr": In(stream.Signature(write_layout(M, att.data_width, True, N))),
            "done": In(1),
            "rows": Out(stream.Signature(q_row_layout(config))),
            "empty": Out(1),
            "requesting": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        att, mem = self.config.attention, self.config.memory
        M, slots = att.qk_mults, mem.q_slots
        m_log2 = M.bit_length() - 1
        m.submodules.ring = ring = Memory(shape=data.ArrayLayout(signed(att.data_width), M),
                                          depth=slots, init=[])
        write = ring.write_port(granularity=8)
        read = ring.read_port(domain="comb")
        fetched = Signal(slots)            # per ring slot: its row is in
        last = Signal(slots)               # per ring slot: its job's last query
        owner = Signal(slots)              # per ring slot: the job slot of its query
        fill_ptr = Signal(range(slots))    # next ring slot to fill
        done_ptr = Signal(range(slots))    # next ring slot to complete (runs complete in order)
        out_ptr = Signal(range(slots))     # next ring slot to leave
        occupied = Signal(range(slots + 1))

        def advance(ptr):
            return ptr.eq(Mux(ptr == slots - 1, 0, ptr + 1))

        requesting = Signal()
        cmd = Signal(run_layout(mem.token_bits, att.capacity))
        cmd_base = Signal(mem.addr_width)
        cmd_d_log2 = Signal.like(self.d_log2)
        m.d.comb += [self.cmd.valid.eq(requesting), self.cmd.payload.eq(cmd),
                     self.base.eq(cmd_base), self.d_log2.eq(cmd_d_log2), self.wr.ready.eq(1),
                     write.addr.eq(self.wr.payload.addr), write.data.eq(self.wr.payload.data),
                     self.requesting.eq(requesting)]
        with m.If(self.wr.valid):
            m.d.comb += write.en.eq(self.wr.payload.en)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += requesting.eq(0)
        with m.If(self.done):
            m.d.sync += [fetched.bit_select(done_ptr, 1).eq(1), advance(done_ptr)]

        job = self.slot.job
        query = self.queries.payload
        allocate = Signal()
        leave = Signal()
        with m.If((self.slot.state != SlotState.FREE) & ~self.slot.queries_taken):
            with m.If(self.slot.refused):
                m.d.comb += self.queries.ready.eq(1)          # a refused job's queries
            with m.Else():
                m.d.comb += self.queries.ready.eq(~requesting & (occupied < slots))
                m.d.comb += allocate.eq(self.queries.valid & self.queries.ready)
        m.d.comb += self.queries_taken.eq(self.queries.valid & self.queries.ready & query.last)
        head_ok = Signal()
        m.d.comb += head_ok.eq(query.head < mem.group_size)
        dst = Signal.like(cmd.dst)
        # position slot * M / d puts the row at lanes 0 .. d-1 of word `slot`
        with m.Switch(job.d_log2):
            for k in range(3, m_log2 + 1):
                with m.Case(k):
                    m.d.comb += dst.eq(fill_ptr << (m_log2 - k))
        with m.If(allocate):
            q_base = Array(job.q_base[h] for h in range(mem.group_size))
            m.d.sync += [requesting.eq(1), cmd.start.eq(query.row), cmd.count.eq(1),
                         cmd.dst.eq(dst), cmd_d_log2.eq(job.d_log2),
                         cmd_base.eq(Mux(head_ok, q_base[query.head], job.q_base[0])),
                         last.bit_select(fill_ptr, 1).eq(query.last),
                         owner.bit_select(fill_ptr, 1).eq(self.slot_index),
                         advance(fill_ptr)]
            m.d.comb += self.bad_head.eq(~head_ok)          # runs as head 0, flagged
        m.d.comb += leave.eq(self.rows.valid & self.rows.ready)
        with m.If(leave):
            m.d.sync += [fetched.bit_select(out_ptr, 1).eq(0), advance(out_ptr)]
        m.d.sync += occupied.eq(occupied + allocate - leave)
        m.d.comb += [self.rows.valid.eq(fetched.bit_select(out_ptr, 1)),
                     self.rows.payload.slot.eq(owner.bit_select(out_ptr, 1)),
                     read.addr.eq(out_ptr), self.rows.payload.data.eq(read.data),
                     self.rows.payload.last.eq(last.bit_select(out_ptr, 1)),
                     self.empty.eq(occupied == 0)]
        return m
