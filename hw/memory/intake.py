"""The core's front: job descriptors and survivor lists in, K MSB runs out (`Intake`)."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from spatten.config import Config

from ..attention.attention import two_banks
from .fetch import run_layout
from .job_slots import (
    CoreError,
    SlotState,
    check_config,
    first_position,
    job_layout,
    slot_layout,
    survivor_layout,
)
from .scan import Coalescer

__all__ = ["Intake", "ADMIT_LATENCY"]

#: cycles from a descriptor's transfer on ``job`` to its survivors being taken: the first one
#: may transfer in the cycle after the descriptor
ADMIT_LATENCY = 1


class Intake(wiring.Component):
    """Checks each job, gives it buffer banks, writes its survivors to the index buffer and asks
    for their K MSB rows; closes the job once they are in.

    ``job`` is taken while the intake slot (``slot``, `hw.memory.job_slots.JobSlots.intake`) is FREE
    and the job's banks are free of the other slot's (``other_banks``): a job of n <= capacity/2
    keys takes the half the other does not hold (the lower one when both are free), a larger one
    both. It is checked (`CoreError`: N_ZERO, N_OVER_CAPACITY, MISALIGNED plane bases,
    BAD_HEAD_DIM, K_V_ZERO, in this priority) and admitted (``admit``, ``admit_*``: the
    `JobSlots` event); a refused job gets no banks, and its survivors are swallowed up to the one
    marked ``last`` (none for n = 0) before it is closed BAD.

    ``survivors`` of a good job are taken one a cycle while the K MSB coalescer is ready: each
    goes to index-buffer position first + i (``index_write``) and, as an item ``{token, pos}``,
    into the coalescer whose runs of consecutive tokens leave on ``k_msb_runs``; a survivor not
    above the one before it or not below ``n_stored`` is not written (``survivor``,
    ``survivor_*`` report each beat). The list ends with the n-th survivor or the one marked
    ``last``; a list that went bad (or whose ``last`` does not fall on the n-th) is swallowed to
    its ``last``. Once its runs are in the reader and the reader is idle (``k_msb_busy`` low)
    the job is closed (``close``): READY, or BAD with BAD_INDEX for a bad list.

    Latency: `ADMIT_LATENCY`; one survivor a cycle.
    """

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        mem, N = config.memory, config.attention.capacity
        super().__init__({
            "job": In(stream.Signature(job_layout(config))),
            "survivors": In(stream.Signature(survivor_layout(config))),
            "slot": In(slot_layout(config)),
            "other_banks": In(2),
            # the index buffer's write port (`lib.memory.WritePort`)
            "index_write": In(WritePort.Signature(addr_width=ceil_log2(N),
                                                  shape=unsigned(mem.token_bits))),
            "k_msb_runs": Out(stream.Signature(run_layout(mem.token_bits, N))),
            "k_msb_busy": In(1),
            # JobSlots events
            "admit": Out(1),
            "admit_job": Out(job_layout(config)),
            "admit_banks": Out(2),
            "admit_error": Out(1),
            "admit_code": Out(CoreError),
            "survivor": Out(1),
            "survivor_written": Out(1),
            "survivor_bad": Out(1),
            "survivor_last": Out(1),
            "close": Out(1),
            "close_state": Out(SlotState),
            "close_bad_list": Out(1),
        })

    def _check(self, m, job):
        """The job's error code (NONE for a good job)."""
        att, mem = self.config.attention, self.config.memory
        beat_bits = mem.beat_bytes.bit_length() - 1
        d_log2_max = min(att.qk_mults, att.pv_mults).bit_length() - 1
        misaligned = Signal()
        if beat_bits:
            bases = [job.k_msb_base, job.k_lsb_base, job.v_base,
                     *[job.q_base[h] for h in range(mem.group_size)]]
            low_bits = [base[:beat_bits] != 0 for base in bases]
            m.d.comb += misaligned.eq(Cat(low_bits).any())
        bad = Signal()
        code = Signal(CoreError)
        with m.If(job.n == 0):
            m.d.comb += [bad.eq(1), code.eq(CoreError.N_ZERO)]
        with m.Elif(job.n > att.capacity):
            m.d.comb += [bad.eq(1), code.eq(CoreError.N_OVER_CAPACITY)]
        with m.Elif(misaligned):
            m.d.comb += [bad.eq(1), code.eq(CoreError.MISALIGNED)]
        with m.Elif((job.d_log2 < 3) | (job.d_log2 > d_log2_max)):
            m.d.comb += [bad.eq(1), code.eq(CoreError.BAD_HEAD_DIM)]
        with m.Elif(job.k_v == 0):
            m.d.comb += [bad.eq(1), code.eq(CoreError.K_V_ZERO)]
        return bad, code

    def elaborate(self, platform):
        m = Module()
        att = self.config.attention
        N, half = att.capacity, att.capacity // 2
        m.submodules.k_msb_runs = runs = Coalescer(token_bits=self.config.memory.token_bits,
                                                   capacity=N)
        wiring.connect(m, runs.o, wiring.flipped(self.k_msb_runs))
        taken = Signal(range(N + 2))        # survivors of the job taken
        above = Signal(len(self.survivors.payload.index) + 1)   # the last one + 1
        last_seen = Signal()                # the job's survivor marked last was taken
        survivor = self.survivors.payload
        job = self.job.payload
        slot = self.slot

        bad, code = self._check(m, job)
        both = Signal()
        m.d.comb += both.eq((job.n > half) | (not two_banks(att)))
        banks = Signal(2)
        m.d.comb += banks.eq(Mux(bad, 0, Mux(both, 0b11, Mux(self.other_banks[0], 0b10, 0b01))))
        fits = Signal()
        m.d.comb += fits.eq((banks & self.other_banks) == 0)
        m.d.comb += [self.admit_job.eq(job), self.admit_banks.eq(banks),
                     self.admit_error.eq(bad), self.admit_code.eq(code)]
        write = self.index_write

        with m.FSM(name="intake"):
            with m.State("IDLE"):
                with m.If(slot.state == SlotState.FREE):
                    m.d.comb += self.job.ready.eq(fits)
                with m.If(self.job.valid & self.job.ready):
                    m.d.comb += self.admit.eq(1)
                    m.d.sync += [taken.eq(0), above.eq(0), last_seen.eq(0)]
                    with m.If(bad & (job.n == 0)):
                        m.d.comb += [self.close.eq(1), self.close_state.eq(SlotState.BAD)]
                    with m.Elif(bad):
                        m.next = "SWALLOW"
                    with m.Else():
                        m.next = "SURVIVORS"
            with m.State("SURVIVORS"):
                ok = Signal()
                last = Signal()
                m.d.comb += [ok.eq((survivor.index >= above) & (survivor.index < slot.job.n_stored)
                                   & ~slot.list_bad),
                             last.eq(survivor.last | (taken + 1 == slot.job.n)),
                             self.survivors.ready.eq(Mux(ok, runs.i.ready, 1)),
                             runs.i.valid.eq(self.survivors.valid & ok),
                             runs.i.payload.token.eq(survivor.index),
                             runs.i.payload.pos.eq(taken),
                             runs.i.payload.last.eq(last),
                             write.addr.eq(first_position(slot, N) + taken),
                             write.data.eq(survivor.index)]
                with m.If(self.survivors.valid & self.survivors.ready):
                    m.d.comb += write.en.eq(ok)
                    m.d.sync += [taken.eq(taken + 1), above.eq(survivor.index + 1),
                                 last_seen.eq(survivor.last)]
                    n_th = taken + 1 == slot.job.n
                    m.d.comb += [self.survivor.eq(1), self.survivor_written.eq(ok),
                                 self.survivor_bad.eq(~ok | (survivor.last & ~n_th)
                                                      | (~survivor.last & n_th)),
                                 self.survivor_last.eq(last)]
                    with m.If(last):
                        m.next = "LOAD"
            with m.State("LOAD"):
                # a bad list: the rest of it is swallowed (the open K run closes); then the K MSB
                # rows are waited for
                with m.If(slot.list_bad):
                    m.d.comb += [self.survivors.ready.eq(~last_seen), runs.flush.eq(1)]
                    with m.If(self.survivors.valid & survivor.last):
                        m.d.sync += last_seen.eq(1)
                with m.If((~slot.list_bad | last_seen) & ~runs.busy & ~self.k_msb_busy):
                    m.d.comb += [self.close.eq(1), self.close_bad_list.eq(slot.list_bad),
                                 self.close_state.eq(Mux(slot.list_bad, SlotState.BAD,
                                                         SlotState.READY))]
                    m.next = "IDLE"
            with m.State("SWALLOW"):
                # a refused job: its survivors are consumed up to the one marked last
                m.d.comb += self.survivors.ready.eq(1)
                with m.If(self.survivors.valid & survivor.last):
                    m.d.comb += [self.close.eq(1), self.close_state.eq(SlotState.BAD)]
                    m.next = "IDLE"
        return m

