"""The query pipeline: Q.K -> softmax -> local value pruning (top-k) -> prob x V.

Parts: the K and V buffers (`hw.attention.kv_buffers.KVBuffers`), the query issuer
(`hw.attention.query_issuer.QueryIssuer`: queries into a ring, passes out), the Q.K array
(`hw.attention.qk`), the softmax, the pass gate (`hw.attention.pass_gate.PassGate`: which passes'
probabilities go on), the pair router (`hw.attention.pair_router.PairRouter`: value pruning's
selector or every key, the kept-pair FIFO, the V-fetch handshake), prob x V (`hw.attention.pv`) and
the run control (`hw.attention.run_control.RunControl`: the run's state machine, its registers, the
outputs and counters).

Contract
--------
K and V live in on-chip buffers (depth ``capacity`` words of M resp. Mv elements; key r's element
j at flat element r*d + j, see `hw/attention/qk.py`); K as two bit planes, the MSB plane
(``msb_bits`` of `MemoryConfig`) and the LSB plane (the other data_width - msb_bits bits). They are
written through ``load`` while the pipeline is idle (one whole word a beat, ``{target: 0 = K (both
planes) / 1 = V, addr, data}``), or at any time through the fetch unit's write streams
``k_msb_wr``, ``k_lsb_wr``, ``v_wr`` (`hw.memory.fetch.write_layout`: a word address, data, enables
of 8-element groups; ``load`` has priority). A *run* is a packet of queries on ``q`` (one beat
per query, ``last`` on the run's final query). The run-time registers ``n`` (keys), ``d_log2``
(head dimension d = 2**d_log2), ``k_v`` (keys kept per query by value pruning; ``k_v >= n``
disables pruning), ``renorm``, the score scaling ``shift``, ``scale``, ``post_shift`` (see
`golden.attention.score_params`) and the progressive quantization registers ``pq``, ``tau``,
``fill_mid`` are sampled with the run's first query, and so is ``bank``: with ``bank = 1`` the
run's keys and values sit in the upper half of the buffers (from word capacity/2 on; the fetch
unit fills one half while a run reads the other, `hw.memory.core.Core`), which needs n <=
capacity/2.

Passes. Queries are numbered (``tag``) in the order they arrive and kept in a ring of 4 until
their last pass is issued. Without progressive quantization (``pq = 0``) every query runs one
full-precision pass (K = MSB and LSB planes). With ``pq = 1`` a query first runs an MSB pass (K
= the MSB plane with the dropped bits filled by their midpoint, ``fill_mid = 1``, or zeros); if
its largest probability is below ``tau`` (U1.16: 0 never, 65536 always), its probabilities are
dropped and it runs again at full precision. The issuer runs one query ahead of the decisions:
M0 M1 [F0] M2 [F1] ... (`golden.progressive.issue_order`). A full pass waits for ``lsb_ready``
(the LSB plane is in the buffer); ``lsb_needed`` asks for it. Outputs leave in the order of the
queries' final passes, each with its ``tag``.

Per query, in order, the pipeline emits:

* on ``o``: the output row ``{data: Mv elements (d used, the rest 0), tag, last, error}`` in
  S(data_width + out_frac_bits), v's scale / 2**out_frac_bits; ``last`` on the run's final
  output;
* on ``probs``: the final pass's probabilities of all n keys (U0.16, S a beat, row-stream
  shape), the stream the token-importance accumulators will take;
* on ``row`` (every pass, dropped ones included): ``{p_max, max, esum, tag, full, refetch}``,
  the row's largest probability (the progressive-quantization trigger), its largest dot product,
  the softmax sum, the query, whether the pass was at full precision and whether it was
  dropped for a full-precision pass.

All three must be consumed (tie ``ready`` high to ignore one). The outputs equal
`golden.attention.attention` bit for bit (`golden.progressive.run_group` with ``pq``).

Overlap: the Q.K array reads K for query i+1 while query i is in the softmax (three banks:
ingest, exponent, normalise), value pruning's selector and prob x V, so with d >= M/S both
multiplier arrays stay busy. A FIFO of capacity/S beats holds the kept pairs between the
selector and prob x V, so the selector can take the next row while prob x V works through the
last one. The selector (`hw/attention/value_select.py`) loads row i + 1 while it selects row i; a
row costs it 2 + (L - 1)(n/P + 4) cycles of selection and an output pass of one cycle per P keys
(more where a P-key row keeps more than S) plus about 10 (`golden.select_cycles`: 155-158 at
n = 512, k_v = 128), less than the Q.K array's n*d/M for n >= 128 at d >= 32. ``macs`` counts
useful multiply-accumulates (Q.K and prob x V),
``cycles`` the cycles from a run's first query to its last output: utilization is
macs / ((M + Mv) * cycles).

Bad input: n = 0, n over capacity, a head dimension out of range, k_v = 0, ``bank = 1`` with
n > capacity/2 end the run at once:
its queries are consumed, one ``o`` beat with ``error = last = 1`` is emitted (nothing on
``probs`` or ``row``), and ``error``/``error_code`` hold until the next run starts. A ``load``
beyond the buffer is dropped and sets ``error`` with ``BAD_LOAD``. Reset returns to idle.
"""

from __future__ import annotations

from amaranth.hdl import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig, Config, MemoryConfig

from ..common.rowstream import Fork, row_layout
from ..common.skid import SkidBuffer
from .kv_buffers import KVBuffers, buffer_writes, load_layout
from .pair_router import PairRouter
from .pass_gate import PassGate, row_info_layout
from .pv import ProbV
from .qk import QKArray
from .query_issuer import RING, TAG_BITS, QueryIssuer, query_layout
from .run_control import (
    ErrorCode,
    RunControl,
    RunState,
    output_layout,
    run_registers,
    run_status,
    two_banks,
)
from .softmax import Softmax, probs_layout
from .value_select import ValueSelect

__all__ = ["ErrorCode", "Attention", "load_layout", "query_layout", "output_layout",
           "row_info_layout", "run_registers", "two_banks", "TAG_BITS", "RING"]


class Attention(wiring.Component):
    """The query pipeline; see the module docstring for the contract.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig or Config (its ``attention`` and ``memory`` fields are used)
    memory : MemoryConfig, optional
        Gives ``msb_bits`` (default: the Config's, else ``MemoryConfig()``).
    """

    def __init__(self, *, config, memory=None):
        if isinstance(config, Config):
            memory = config.memory if memory is None else memory
            config = config.attention
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig or a Config, not {config!r}")
        memory = MemoryConfig() if memory is None else memory
        if not isinstance(memory, MemoryConfig):
            raise TypeError(f"memory must be a MemoryConfig, not {memory!r}")
        self.cfg = cfg = config
        self.memory = memory
        self.msb_bits = memory.msb_bits
        self.lsb_bits = memory.lsb_bits(cfg.data_width)
        self.d_log2_max = min(cfg.qk_mults, cfg.pv_mults).bit_length() - 1
        super().__init__({
            "load": In(stream.Signature(load_layout(cfg))),
            **buffer_writes(cfg, memory),
            "q": In(stream.Signature(query_layout(cfg))),
            "o": Out(stream.Signature(output_layout(cfg))),
            "probs": Out(stream.Signature(row_layout(unsigned(cfg.prob_bits), cfg.softmax_lanes))),
            "row": Out(stream.Signature(row_info_layout(cfg))),
            # run-time registers, sampled with a run's first query
            "n": In(range(cfg.capacity + 1)),
            **run_registers(cfg),
            "bank": In(1),
            # the K LSB plane is in its buffer (full-precision passes wait for it)
            "lsb_ready": In(1),
            # V rows are fetched per query: ``kept`` gives each final pass's kept indices,
            # ``v_done`` pulses once per query when its rows are in the V buffer
            "v_wait": In(1),
            "kept": Out(stream.Signature(row_layout(unsigned(cfg.index_width),
                                                    cfg.softmax_lanes))),
            "v_done": In(1),
            # prob x V has a query's pairs but waits for its V rows (a memory stall)
            "v_stall": Out(1),
            # status
            "lsb_needed": Out(1),
            **run_status(),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()

        m.submodules.buffers = buffers = KVBuffers(config=cfg, memory=self.memory)
        m.submodules.issuer = issuer = QueryIssuer(config=cfg)
        m.submodules.qk = qk = QKArray(config=cfg)
        m.submodules.softmax = sm = Softmax(config=cfg)
        m.submodules.gate = gate = PassGate(config=cfg)
        m.submodules.vsel = vsel = ValueSelect(config=cfg)
        m.submodules.pairs = pairs = PairRouter(config=cfg)
        # the probabilities of a softmax row sum below 2**16 + 2 + n/2 (each is rounded from
        # e * recip, whose sum is below 2**16 + 2: `golden.attention.softmax`), so below 2**17
        # for any capacity the config allows: prob x V's accumulators need 17 bits of sum
        assert (1 << cfg.prob_bits) + 2 + cfg.capacity // 2 < (1 << (cfg.prob_bits + 1))
        m.submodules.pv = pv = ProbV(config=cfg, p_sum_bits=cfg.prob_bits + 1)
        m.submodules.control = control = RunControl(config=cfg)
        prob_row = probs_layout(cfg)
        m.submodules.fork = fork = Fork(prob_row, ways=2)
        # registered readies on both sides of the fork, so that no ready path runs from prob x V
        # or the value-pruning selector through the fork into the softmax (timing on the FPGA)
        m.submodules.sm_skid = sm_skid = SkidBuffer(prob_row)
        m.submodules.f1_skid = f1_skid = SkidBuffer(prob_row)

        # run control: a run starts with its first query; the run's registers go to the units
        params = control.params
        m.d.comb += [getattr(control, name).eq(getattr(self, name))
                     for name in ("n", *run_registers(cfg), "bank", "v_wait")]
        m.d.comb += [getattr(self, name).eq(getattr(control, name)) for name in run_status()]
        m.d.comb += [
            control.query_valid.eq(self.q.valid),
            control.loading.eq(buffers.loading), control.load_error.eq(buffers.load_error),
            control.accepted.eq(issuer.accepted), control.last_seen.eq(issuer.last_seen),
            control.unit_macs.eq(qk.macs + pv.macs), control.refetch.eq(gate.refetch),
            qk.n.eq(params.n), qk.d_log2.eq(params.d_log2),
            sm.shift.eq(params.shift), sm.scale.eq(params.scale),
            sm.post_shift.eq(params.post_shift),
            gate.pq.eq(params.pq), gate.tau.eq(params.tau),
            vsel.k.eq(params.k_v),
            pairs.prune.eq(params.prune), pairs.v_wait.eq(params.v_wait),
            pairs.start.eq(control.start_ok),
            pv.d_log2.eq(params.d_log2), pv.renorm.eq(params.renorm),
        ]

        # the buffers: loaded while idle, written by the fetch unit, read in the run's bank
        wiring.connect(m, wiring.flipped(self.load), buffers.load)
        for name in buffer_writes(cfg, self.memory):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(buffers, name))
        m.d.comb += [buffers.load_enable.eq(control.state == RunState.IDLE),
                     buffers.offset.eq(params.offset), buffers.fill_mid.eq(params.fill_mid),
                     buffers.k_full.eq(issuer.pass_full)]
        wiring.connect(m, qk.k_rd, buffers.k_rd)
        wiring.connect(m, pv.v_rd, buffers.v_rd)

        # queries into the issuer's ring, their passes to the Q.K array
        wiring.connect(m, wiring.flipped(self.q), issuer.q)
        m.d.comb += [issuer.start.eq(control.start),
                     issuer.running.eq(control.state == RunState.RUN),
                     issuer.draining.eq(control.state == RunState.DRAIN),
                     issuer.pq.eq(params.pq),
                     issuer.lsb_ready.eq(self.lsb_ready), self.lsb_needed.eq(issuer.lsb_needed)]
        wiring.connect(m, issuer.passes, qk.q)

        # Q.K -> softmax -> the gate (each pass's row decides whether its probabilities go on)
        wiring.connect(m, qk.o, sm.i)
        wiring.connect(m, issuer.in_flight, gate.in_flight)
        wiring.connect(m, sm.row, gate.scores_row)
        wiring.connect(m, sm.o, gate.scores_probs)
        wiring.connect(m, gate.row, wiring.flipped(self.row))
        wiring.connect(m, gate.decisions, issuer.decisions)
        wiring.connect(m, gate.probs, sm_skid.i)
        wiring.connect(m, sm_skid.o, fork.i)
        wiring.connect(m, fork.o0, wiring.flipped(self.probs))
        wiring.connect(m, fork.o1, f1_skid.i)

        # probabilities -> (pruning) selector -> pairs -> prob x V -> outputs
        wiring.connect(m, f1_skid.o, pairs.probs)
        wiring.connect(m, pairs.to_select, vsel.i)
        wiring.connect(m, vsel.o, pairs.selected)
        wiring.connect(m, pairs.kept, wiring.flipped(self.kept))
        m.d.comb += [pairs.v_done.eq(self.v_done), self.v_stall.eq(pairs.v_stall)]
        wiring.connect(m, pairs.pairs, pv.i)
        wiring.connect(m, pv.o, control.results)
        wiring.connect(m, gate.finals, control.finals)
        wiring.connect(m, control.o, wiring.flipped(self.o))
        return m
