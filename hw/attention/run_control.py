"""The query pipeline's run control: a run starts with its first query, its run-time registers
checked and sampled; it ends with the output of its final query, or at once with an error beat
when the registers are bad. It also emits the outputs and keeps the run's counters."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from .pv import output_layout as pv_output_layout
from .query_issuer import TAG_BITS

__all__ = ["RunControl", "RunState", "ErrorCode", "output_layout", "run_registers",
           "run_status", "run_params_layout", "two_banks"]


class ErrorCode(enum.Enum, shape=3):
    NONE = 0
    N_ZERO = 1            # n = 0
    N_OVER_CAPACITY = 2   # n > capacity
    BAD_HEAD_DIM = 3      # d_log2 outside 3..log2(min(M, Mv))
    K_V_ZERO = 4          # value pruning asked to keep no key
    BAD_LOAD = 5          # a load address beyond the buffer
    BAD_BANK = 6          # bank = 1 with n > capacity/2 (or a buffer without two banks)


class RunState(enum.Enum, shape=2):
    IDLE = 0              # no run: buffer loads, or a run's first query starts it
    RUN = 1               # a run's queries go through the pipeline
    DRAIN = 2             # a bad run: its queries are swallowed, then one error beat


def output_layout(cfg: AttentionConfig) -> data.StructLayout:
    """One output row: Mv elements (d used, the rest 0), the query's tag, ``last`` on the
    run's final output, ``error`` on a bad run's single beat."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.out_width), cfg.pv_mults),
        "tag": unsigned(TAG_BITS),
        "last": 1,
        "error": 1,
    })


def run_registers(cfg: AttentionConfig) -> dict:
    """The pipeline's run-time register ports other than ``n`` (sampled with a run's first
    query), as signature members; `hw.memory.core.Core` takes the same ones for its jobs."""
    return {
        "d_log2": In(range(8)),
        "k_v": In(range(cfg.capacity + 1)),
        "renorm": In(1),
        "shift": In(range(cfg.dot_width + 1)),
        "scale": In(unsigned(cfg.scale_bits)),
        "post_shift": In(range(cfg.post_shift_max + 1)),
        "pq": In(1),
        "tau": In(unsigned(cfg.prob_bits + 1)),
        "fill_mid": In(1),
    }


def run_status() -> dict:
    """The pipeline's status ports, as signature members: a run is going (``busy``); the last
    run ended (``done``), with ``error`` and its ``error_code`` until the next run starts; the
    run's cycles, multiply-accumulates, outputs (``queries``) and dropped passes
    (``refetched``)."""
    return {
        "busy": Out(1),
        "done": Out(1),
        "error": Out(1),
        "error_code": Out(ErrorCode),
        "cycles": Out(32),
        "macs": Out(32),
        "queries": Out(32),
        "refetched": Out(32),
    }


def run_params_layout(cfg: AttentionConfig) -> data.StructLayout:
    """A run's sampled registers: ``n``, `run_registers`, ``v_wait``, whether it prunes
    (k_v < n) and the word offset of its bank in the buffers."""
    return data.StructLayout({
        "n": range(cfg.capacity + 1),
        **{name: member.shape for name, member in run_registers(cfg).items()},
        "v_wait": 1,
        "prune": 1,
        "offset": range(cfg.capacity),
    })


def two_banks(cfg: AttentionConfig) -> bool:
    """The buffers split into two banks of capacity/2 words (what ``bank`` needs): each holds
    the keys and values of a run of up to capacity/2 keys at any head dimension."""
    return cfg.capacity % 2 == 0


class RunControl(wiring.Component):
    """Runs: start, registers, end; the outputs and the run's counters.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)

    Ports
    -----
    query_valid : In(1)
        A query is offered: in `RunState.IDLE` (and no load) it starts a run.
    n, d_log2, k_v, renorm, shift, scale, post_shift, pq, tau, fill_mid, bank, v_wait : In
        The run-time registers (`run_registers`), checked and sampled as a run starts.
    loading, load_error : In(1)
        A buffer load is taken this cycle (it has priority over starting a run); it is beyond
        the buffer (``error`` with `ErrorCode.BAD_LOAD`).
    state : Out(RunState)
    start : Out(1)
        A run starts this cycle (good or bad: the run's counters clear).
    start_ok : Out(1)
        ... and its registers are good: they are sampled into ``params``; the run goes to
        `RunState.RUN` (else `RunState.DRAIN`, with ``error`` and its `ErrorCode`).
    params : Out(`run_params_layout`(cfg))
        The running run's registers.
    accepted : In(32), last_seen : In(1)
        Queries of the run taken so far; its final query was taken (`hw.attention.query_issuer`).
    results : In(stream.Signature(`hw.attention.pv.output_layout`(cfg)))
        prob x V's output rows, one per final pass.
    finals : In(stream.Signature(unsigned(TAG_BITS)))
        The tag of each final pass, in order, one per ``results`` row: taken with its row
        without waiting for ``valid`` (the pass gate has a final pass's tag long before prob x V
        has its row).
    o : Out(stream.Signature(`output_layout`(cfg)))
        In a run, the results with their tags, ``last`` on the run's final query's; in a bad
        run, once its final query is taken, one beat with ``error`` = ``last`` = 1.
    unit_macs : In(32), refetch : In(1)
        The arrays' multiply-accumulate counters summed; a pass was dropped this cycle.
    busy, done, error, error_code, cycles, macs, queries, refetched : Out
        `run_status`.
    """

    def __init__(self, *, config):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, not {config!r}")
        self.config = cfg = config
        N = cfg.capacity
        super().__init__({
            "query_valid": In(1),
            "n": In(range(N + 1)),
            **run_registers(cfg),
            "bank": In(1),
            "v_wait": In(1),
            "loading": In(1),
            "load_error": In(1),
            "state": Out(RunState),
            "start": Out(1),
            "start_ok": Out(1),
            "params": Out(run_params_layout(cfg)),
            "accepted": In(32),
            "last_seen": In(1),
            "results": In(stream.Signature(pv_output_layout(cfg))),
            "finals": In(stream.Signature(unsigned(TAG_BITS))),
            "o": Out(stream.Signature(output_layout(cfg))),
            "unit_macs": In(32),
            "refetch": In(1),
            **run_status(),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        d_log2_max = min(cfg.qk_mults, cfg.pv_mults).bit_length() - 1

        bad = Signal()
        code = Signal(ErrorCode)
        with m.If(self.n == 0):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.N_ZERO)]
        with m.Elif(self.n > cfg.capacity):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.N_OVER_CAPACITY)]
        with m.Elif((self.d_log2 < 3) | (self.d_log2 > d_log2_max)):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.BAD_HEAD_DIM)]
        with m.Elif(self.k_v == 0):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.K_V_ZERO)]
        with m.Elif(self.bank & ((self.n > cfg.capacity // 2) | (not two_banks(cfg)))):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.BAD_BANK)]

        q_out = self.queries        # outputs of this run emitted
        mac_base = Signal(32)
        m.d.comb += self.macs.eq(self.unit_macs - mac_base)
        done, error, error_code = self.done, self.error, self.error_code
        params = self.params
        o = self.o
        with m.Switch(self.state):
            with m.Case(RunState.IDLE):
                with m.If(self.loading):
                    with m.If(self.load_error):
                        m.d.sync += [error.eq(1), error_code.eq(ErrorCode.BAD_LOAD),
                                     done.eq(0)]
                with m.Elif(self.query_valid):
                    m.d.comb += self.start.eq(1)
                    m.d.sync += [done.eq(0), error.eq(0), error_code.eq(ErrorCode.NONE),
                                 q_out.eq(0), self.cycles.eq(0), mac_base.eq(self.unit_macs),
                                 self.refetched.eq(0)]
                    with m.If(bad):
                        m.d.sync += [error.eq(1), error_code.eq(code),
                                     self.state.eq(RunState.DRAIN)]
                    with m.Else():
                        m.d.comb += self.start_ok.eq(1)
                        m.d.sync += [getattr(params, name).eq(getattr(self, name))
                                     for name in ("n", *run_registers(cfg), "v_wait")]
                        m.d.sync += [params.prune.eq(self.k_v < self.n),
                                     params.offset.eq(Mux(self.bank, cfg.capacity // 2, 0)),
                                     self.state.eq(RunState.RUN)]
            with m.Case(RunState.RUN):
                m.d.comb += self.busy.eq(1)
                m.d.sync += self.cycles.eq(self.cycles + 1)
                final = Signal()
                m.d.comb += [
                    final.eq(self.last_seen & (q_out + 1 == self.accepted)),
                    o.valid.eq(self.results.valid),
                    self.results.ready.eq(o.ready),
                    o.payload.last.eq(final),
                    o.payload.tag.eq(self.finals.payload),
                ]
                for i in range(cfg.pv_mults):
                    m.d.comb += o.payload.data[i].eq(self.results.payload.data[i])
                with m.If(o.valid & o.ready):
                    m.d.comb += self.finals.ready.eq(1)
                    m.d.sync += q_out.eq(q_out + 1)
                    with m.If(final):
                        m.d.sync += [done.eq(1), self.state.eq(RunState.IDLE)]
            with m.Case(RunState.DRAIN):
                # a bad run: once its queries are swallowed, one error beat
                m.d.comb += self.busy.eq(1)
                with m.If(self.last_seen):
                    m.d.comb += [o.valid.eq(1), o.payload.last.eq(1), o.payload.error.eq(1)]
                    with m.If(o.ready):
                        m.d.sync += [done.eq(1), self.state.eq(RunState.IDLE)]
        with m.If(self.refetch):
            m.d.sync += self.refetched.eq(self.refetched + 1)
        return m
