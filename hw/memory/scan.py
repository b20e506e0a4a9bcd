"""Scans of the index buffer into runs of a plane: `Scanner` (positions of the index buffer as
(token, position) items), `Coalescer` (items into runs of consecutive tokens) and `SlotScan` (both,
for the survivors of a job slot: the core's K LSB fetch and V prefetch)."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from .fetch import run_layout
from .job_slots import check_config, first_position, pick, slot_layout

__all__ = ["item_layout", "Scanner", "Coalescer", "SlotScan", "SCAN_START_LATENCY"]

#: cycles from ``wanted`` rising (a `SlotScan` idle) to its first item reaching the coalescer
SCAN_START_LATENCY = 3


def item_layout(token_bits: int, capacity: int) -> data.StructLayout:
    """A (token, buffer position) item of a `Coalescer`; ``last`` closes the run after it."""
    return data.StructLayout({"token": unsigned(token_bits), "pos": range(capacity), "last": 1})


class Scanner(wiring.Component):
    """Positions ``base .. base+count-1`` of the index buffer, in order, as coalescer items
    ``{token, pos, last}`` (``pos`` counted from 0, ``last`` on the count-th).

    ``start`` (a pulse while not ``busy``) samples ``base`` and ``count`` (>= 1); position
    ``base + i`` is read only once ``i < limit`` (the intake may still be writing the list);
    ``abort`` stops the scan after the items already read. ``rd_addr``/``rd_data``: a
    synchronous read port of the index buffer (always enabled). ``busy``: a scan is running or
    its last item has not left. One item a cycle when ``o`` is ready."""

    def __init__(self, *, token_bits: int, capacity: int):
        self.token_bits, self.capacity = token_bits, capacity
        super().__init__({
            "start": In(1),
            "base": In(range(capacity)),
            "count": In(range(capacity + 1)),
            "limit": In(range(capacity + 1)),
            "abort": In(1),
            "rd_addr": Out(range(capacity)),
            "rd_data": In(unsigned(token_bits)),
            "o": Out(stream.Signature(item_layout(token_bits, capacity))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.capacity
        active = Signal()
        base = Signal(range(N))
        count = Signal(range(N + 1))
        pos = Signal(range(N + 1))          # next position to read (from base)
        item_valid = Signal()               # an item read, waiting for o.ready
        item_pos = Signal(range(N))
        item_last = Signal()
        held = Signal()
        o = self.o
        # while an item waits, its address is read again so that rd_data stays valid
        m.d.comb += [held.eq(item_valid & ~o.ready),
                     self.rd_addr.eq(base + Mux(held, item_pos, pos)),
                     o.valid.eq(item_valid), o.payload.token.eq(self.rd_data),
                     o.payload.pos.eq(item_pos), o.payload.last.eq(item_last),
                     self.busy.eq(active | item_valid)]
        with m.If(o.valid & o.ready):
            m.d.sync += item_valid.eq(0)
        with m.If(active & ~held & (pos < self.limit) & ~self.abort):
            m.d.sync += [item_valid.eq(1), item_pos.eq(pos), item_last.eq(pos + 1 == count),
                         pos.eq(pos + 1)]
            with m.If(pos + 1 == count):
                m.d.sync += active.eq(0)
        with m.If(self.abort):
            m.d.sync += active.eq(0)
        with m.If(self.start & ~active & ~item_valid):
            m.d.sync += [active.eq(self.count != 0), base.eq(self.base), count.eq(self.count),
                         pos.eq(0)]
        return m


class Coalescer(wiring.Component):
    """(token, position) items, tokens ascending, into runs of consecutive tokens.

    ``i``: ``{token, pos, last}``; a run grows while the next token is the run's end (and it has
    fewer than ``capacity`` rows); ``last`` closes the current run after its item, and so does
    ``flush`` (in a cycle without an item). ``o``: runs ``{start, count, dst}``
    (`hw.memory.fetch.run_layout`), each once its end is known. ``busy``: a run is held."""

    def __init__(self, *, token_bits: int, capacity: int):
        self.token_bits, self.capacity = token_bits, capacity
        super().__init__({
            "i": In(stream.Signature(item_layout(token_bits, capacity))),
            "o": Out(stream.Signature(run_layout(token_bits, capacity))),
            "flush": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        holding = Signal()
        start = Signal(self.token_bits)
        count = Signal(range(self.capacity + 1))
        dst = Signal(range(self.capacity))
        closing = Signal()              # the held run is complete (waits for o.ready)
        o = self.o
        m.d.comb += [o.payload.start.eq(start), o.payload.count.eq(count),
                     o.payload.dst.eq(dst), self.busy.eq(holding)]
        it = self.i.payload
        extends = Signal()
        m.d.comb += extends.eq(holding & ~closing & (it.token == start + count)
                               & (count < self.capacity))
        m.d.comb += o.valid.eq(holding & (closing | (self.i.valid & ~extends)))
        # an item is taken when it extends the open run, or when the run it ends has left
        m.d.comb += self.i.ready.eq(~closing & (~holding | extends | o.ready))
        with m.If(o.valid & o.ready):
            m.d.sync += [holding.eq(0), closing.eq(0)]
        with m.If(self.i.valid & self.i.ready):
            with m.If(extends):
                m.d.sync += count.eq(count + 1)
            with m.Else():
                m.d.sync += [holding.eq(1), start.eq(it.token), count.eq(1), dst.eq(it.pos)]
            m.d.sync += closing.eq(it.last)
        with m.Elif(self.flush & holding & ~(o.valid & o.ready)):
            m.d.sync += closing.eq(1)
        return m


class SlotScan(wiring.Component):
    """The survivors of a job slot, read back from the index buffer, as runs of a plane.

    A slot whose bit of ``wanted`` is set gets a scan, the ``preferred`` slot first (the core's
    running job, whose pipeline may wait for the rows): its n positions of the index buffer
    (from its first position, `hw.memory.job_slots.first_position`) go through a `Scanner` (read
    only as far as the intake has written them, ``slots[s].written``, and stopped when the list went
    bad) into a `Coalescer`, whose runs leave on ``runs`` for a `hw.memory.fetch.PlaneReader`. When
    the scan is over, its last run has left and the reader is done with them (``drained``),
    ``done`` pulses for the slot ``slot`` (the `hw.memory.job_slots.JobSlots` event ``lsb_in`` or
    ``v_prefetch_in``). ``item``/``item_position`` report each item the coalescer takes and its
    index-buffer position.

    ``rd_addr``/``rd_data``: a synchronous read port of the index buffer, always enabled.
    Latency: `SCAN_START_LATENCY` from ``wanted`` to the first item; then one item a cycle.
    """

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        N, token_bits = config.attention.capacity, config.memory.token_bits
        super().__init__({
            "wanted": In(2),
            "preferred": In(1),
            "slots": In(data.ArrayLayout(slot_layout(config), 2)),
            "drained": In(1),
            "rd_addr": Out(range(N)),
            "rd_data": In(unsigned(token_bits)),
            "runs": Out(stream.Signature(run_layout(token_bits, N))),
            "slot": Out(1),
            "done": Out(1),
            "item": Out(1),
            "item_position": Out(range(N)),
        })

    def elaborate(self, platform):
        m = Module()
        N, token_bits = self.config.attention.capacity, self.config.memory.token_bits
        m.submodules.scanner = scanner = Scanner(token_bits=token_bits, capacity=N)
        m.submodules.runs = runs = Coalescer(token_bits=token_bits, capacity=N)
        m.d.comb += [self.rd_addr.eq(scanner.rd_addr), scanner.rd_data.eq(self.rd_data)]
        wiring.connect(m, scanner.o, runs.i)
        wiring.connect(m, runs.o, wiring.flipped(self.runs))
        slot = pick(m, self.slots, self.slot)
        m.d.comb += [scanner.limit.eq(Mux(slot.intake_done, slot.job.n, slot.written)),
                     scanner.abort.eq(slot.list_bad),
                     self.item.eq(scanner.o.valid & scanner.o.ready),
                     self.item_position.eq(first_position(slot, N) + scanner.o.payload.pos)]
        with m.FSM(name="scan"):
            with m.State("IDLE"):
                preferred = self.wanted.bit_select(self.preferred, 1)
                other = self.wanted.bit_select(~self.preferred, 1)
                with m.If(preferred | other):
                    m.d.sync += self.slot.eq(Mux(preferred, self.preferred, ~self.preferred))
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [scanner.start.eq(1), scanner.base.eq(first_position(slot, N)),
                             scanner.count.eq(slot.job.n)]
                m.next = "SCAN"
            with m.State("SCAN"):
                m.d.comb += runs.flush.eq(~scanner.busy)
                with m.If(~scanner.busy & ~runs.busy & self.drained):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
