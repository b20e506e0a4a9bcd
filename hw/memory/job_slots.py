"""The core's two job slots: the descriptor and the bookkeeping of each head group in flight.

A *job* (`hw.memory.core`) is one head group; job j lives in slot j % 2 from its descriptor to its
last output. Three pointers say which slot each part of the core works on, and each moves to the
other slot when its part is done with a job, so that they follow the jobs in order: ``intake_slot``
(the slot the intake fills: descriptor, survivors, K MSB rows), ``query_slot`` (the slot whose
queries the Q fetch takes) and ``run_slot`` (the slot the pipeline runs).

This module also defines the shapes the core's job interface shares with the testbenches:
`job_layout` (a descriptor), `survivor_layout`, `query_cmd_layout` and `CoreError`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from ..attention.attention import run_registers

__all__ = ["CoreError", "SlotState", "RowsState", "job_layout", "survivor_layout",
           "query_cmd_layout", "slot_layout", "JobSlots", "check_config", "pick", "upper_bank",
           "first_position", "bank_word", "EVENT_LATENCY"]

#: cycles from an event on a `JobSlots` input to its effect on ``slots``
EVENT_LATENCY = 1


class CoreError(enum.Enum, shape=4):
    NONE = 0
    N_ZERO = 1
    N_OVER_CAPACITY = 2
    BAD_INDEX = 3          # survivors not strictly ascending or not below n_stored
    MISALIGNED = 4         # a plane base not a multiple of the beat
    BAD_HEAD = 5           # a query head outside the group
    DRAM = 6               # an error beat from the memory
    ATTENTION = 7          # the query pipeline's own error (see attention_error)
    BAD_HEAD_DIM = 8       # d_log2 outside 3..log2(min(M, Mv))
    K_V_ZERO = 9           # value pruning asked to keep no key


class SlotState(enum.Enum, shape=3):
    """Where a slot's job is."""
    FREE = 0               # no job
    INTAKE = 1             # its survivors come in, their K MSB rows are fetched
    READY = 2              # its K MSB rows are in: the pipeline may run it
    RUN = 3                # the pipeline runs it
    BAD = 4                # it went bad before it ran: its error beat is due


class RowsState(enum.Enum, shape=2):
    """A slot's K LSB rows, or the prefetch of its V rows."""
    NOT_WANTED = 0
    WANTED = 1             # to be fetched (a scan of the job's survivors is due or running)
    IN = 2                 # all in the buffer


def survivor_layout(config: Config) -> data.StructLayout:
    """A survivor beat: a token index (a row of the group's K and V planes)."""
    return data.StructLayout({"index": unsigned(config.memory.token_bits), "last": 1})


def query_cmd_layout(config: Config) -> data.StructLayout:
    """A query beat: row ``row`` of query head ``head``'s Q plane."""
    mem = config.memory
    return data.StructLayout({"head": range(max(2, mem.group_size)),
                              "row": unsigned(mem.token_bits), "last": 1})


def job_layout(config: Config) -> data.StructLayout:
    """A job descriptor (see `hw.memory.core`); the run registers have the shapes of
    `hw.attention.attention.run_registers`."""
    mem = config.memory
    fields = {
        "n": unsigned(mem.token_bits + 1),
        "n_stored": unsigned(mem.token_bits + 1),
        "k_msb_base": unsigned(mem.addr_width),
        "k_lsb_base": unsigned(mem.addr_width),
        "v_base": unsigned(mem.addr_width),
        "q_base": data.ArrayLayout(unsigned(mem.addr_width), mem.group_size),
    }
    for name, member in run_registers(config.attention).items():
        fields[name] = member.shape
    return data.StructLayout(fields)


def slot_layout(config: Config) -> data.StructLayout:
    """One job slot (see `JobSlots`)."""
    return data.StructLayout({
        "state": SlotState,
        "job": job_layout(config),
        "banks": 2,                                     # buffer halves held: 0b01, 0b10, 0b11
        "error": 1,
        "code": CoreError,
        "refused": 1,                                   # bad before any fetch
        "queries_taken": 1,                             # its last query was taken
        "written": range(config.attention.capacity + 1),    # survivors written to the index
        "intake_done": 1,                               # every survivor written
        "list_bad": 1,                                  # a bad survivor was seen
        "lsb": RowsState,
        "v_prefetch": RowsState,
    })


def check_config(component, config) -> Config:
    """``config`` if it is a `Config`, else a TypeError (and ``component`` is marked as never to
    be elaborated, so that Amaranth does not warn about it)."""
    if not isinstance(config, Config):
        component._MustUse__silence = True
        raise TypeError(f"config must be a Config, not {config!r}")
    return config


def pick(m: Module, pair, sel):
    """``pair[sel]``: one of two signals or views of one shape, as a signal of that shape."""
    out = Signal(pair[0].shape())
    m.d.comb += out.eq(Mux(sel, pair[1], pair[0]))
    return out


def upper_bank(slot):
    """The job of ``slot`` (a `slot_layout` view) sits in the upper half of the buffers."""
    return slot.banks == 0b10


def first_position(slot, capacity: int):
    """The first index-buffer (and K/V buffer) position of the job of ``slot``."""
    return Mux(upper_bank(slot), capacity // 2, 0)


def bank_word(addr, upper, capacity: int):
    """Word ``addr`` of a job's bank: in the upper half of a buffer of ``capacity`` words when
    ``upper``."""
    offset = Mux(upper, capacity // 2, 0)
    return (addr | offset) if capacity & (capacity - 1) == 0 else (addr + offset)


class JobSlots(wiring.Component):
    """Two job slots and the three pointers into them (see the module docstring).

    ``slots`` holds both slots (`slot_layout`): ``state`` (`SlotState`), the descriptor ``job``,
    ``banks`` (the halves of the K/V buffers the job holds), ``error``/``code`` (the job went bad;
    its outputs are flagged or replaced by an error beat), ``refused`` (bad before any fetch),
    ``queries_taken``, ``written``/``intake_done``/``list_bad`` (survivors written to the index
    buffer, all of them, a bad one seen) and ``lsb``/``v_prefetch`` (`RowsState`).
    ``intake``, ``querying`` and ``running`` are the slots the three pointers select
    (combinational).

    Events: one-cycle pulses, each taking effect `EVENT_LATENCY` cycle later; where two change one
    field in the same cycle, the one listed later wins.

    - ``admit`` (intake slot): a new job, ``admit_job``, holding ``admit_banks``, with
      ``admit_error``/``admit_code`` (refused when set); state INTAKE; its K LSB rows are wanted
      at once without progressive quantization (``pq = 0``) and its V rows prefetched without
      value pruning (``k_v >= n``), unless refused.
    - ``survivor`` (intake slot): a survivor beat taken: ``survivor_written`` (it went to the
      index buffer), ``survivor_bad``, ``survivor_last`` (the list is complete).
    - ``close`` (intake slot): the intake is done with the job: state ``close_state``; with
      ``close_bad_list`` the error BAD_INDEX; the intake pointer moves on.
    - ``lsb_in``/``v_prefetch_in`` (slot ``lsb_slot``/``v_prefetch_slot``): those rows are in.
    - ``queries_taken`` (query slot): its last query was taken; the query pointer moves on.
    - ``bad_head`` (query slot): a query of a head outside the group: the error BAD_HEAD.
    - ``want_lsb`` (run slot): the pipeline asks for the K LSB rows.
    - ``dram_error``: an error beat from the memory: the error DRAM for the run slot's job if it
      runs.
    - ``run_start`` (run slot): state RUN. ``release`` (run slot): state FREE, its banks free; the
      run pointer moves on.
    """

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        slot = slot_layout(config)
        super().__init__({
            "slots": Out(data.ArrayLayout(slot, 2)),
            "intake_slot": Out(1),
            "query_slot": Out(1),
            "run_slot": Out(1),
            "intake": Out(slot),
            "querying": Out(slot),
            "running": Out(slot),
            "admit": In(1),
            "admit_job": In(job_layout(config)),
            "admit_banks": In(2),
            "admit_error": In(1),
            "admit_code": In(CoreError),
            "survivor": In(1),
            "survivor_written": In(1),
            "survivor_bad": In(1),
            "survivor_last": In(1),
            "close": In(1),
            "close_state": In(SlotState),
            "close_bad_list": In(1),
            "lsb_in": In(1),
            "lsb_slot": In(1),
            "v_prefetch_in": In(1),
            "v_prefetch_slot": In(1),
            "queries_taken": In(1),
            "bad_head": In(1),
            "want_lsb": In(1),
            "dram_error": In(1),
            "run_start": In(1),
            "release": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        slots = self.slots
        fill, query, run = self.intake_slot, self.query_slot, self.run_slot
        m.d.comb += [self.intake.eq(pick(m, slots, fill)), self.querying.eq(pick(m, slots, query)),
                     self.running.eq(pick(m, slots, run))]
        for s in range(2):
            slot = slots[s]
            job = self.admit_job
            with m.If(self.admit & (fill == s)):
                bad = self.admit_error
                m.d.sync += [
                    slot.job.eq(job), slot.banks.eq(self.admit_banks), slot.error.eq(bad),
                    slot.code.eq(self.admit_code), slot.refused.eq(bad),
                    slot.queries_taken.eq(0), slot.written.eq(0), slot.intake_done.eq(0),
                    slot.list_bad.eq(0),
                    slot.lsb.eq(Mux(~bad & ~job.pq, RowsState.WANTED, RowsState.NOT_WANTED)),
                    slot.v_prefetch.eq(Mux(~bad & (job.k_v >= job.n), RowsState.WANTED,
                                           RowsState.NOT_WANTED)),
                    slot.state.eq(SlotState.INTAKE)]
            with m.If(self.survivor & (fill == s)):
                with m.If(self.survivor_written):
                    m.d.sync += slot.written.eq(slot.written + 1)
                with m.If(self.survivor_bad):
                    m.d.sync += slot.list_bad.eq(1)
                with m.If(self.survivor_last):
                    m.d.sync += slot.intake_done.eq(1)
            with m.If(self.close & (fill == s)):
                m.d.sync += slot.state.eq(self.close_state)
                with m.If(self.close_bad_list):
                    m.d.sync += [slot.error.eq(1), slot.code.eq(CoreError.BAD_INDEX)]
            with m.If(self.lsb_in & (self.lsb_slot == s)):
                m.d.sync += slot.lsb.eq(RowsState.IN)
            with m.If(self.v_prefetch_in & (self.v_prefetch_slot == s)):
                m.d.sync += slot.v_prefetch.eq(RowsState.IN)
            with m.If(self.queries_taken & (query == s)):
                m.d.sync += slot.queries_taken.eq(1)
            with m.If(self.bad_head & (query == s)):
                m.d.sync += [slot.error.eq(1), slot.code.eq(CoreError.BAD_HEAD)]
            with m.If(self.want_lsb & (run == s)):
                m.d.sync += slot.lsb.eq(RowsState.WANTED)
            with m.If(self.dram_error & (run == s) & (slot.state == SlotState.RUN)):
                m.d.sync += [slot.error.eq(1), slot.code.eq(CoreError.DRAM)]
            with m.If(self.run_start & (run == s)):
                m.d.sync += slot.state.eq(SlotState.RUN)
            with m.If(self.release & (run == s)):
                m.d.sync += [slot.state.eq(SlotState.FREE), slot.banks.eq(0)]
        with m.If(self.close):
            m.d.sync += fill.eq(~fill)
        with m.If(self.queries_taken):
            m.d.sync += query.eq(~query)
        with m.If(self.release):
            m.d.sync += run.eq(~run)
        return m
