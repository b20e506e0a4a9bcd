"""The query pipeline: Q.K -> softmax -> local value pruning (top-k) -> prob x V.

Contract
--------
K and V live in on-chip buffers (depth ``capacity`` words of M resp. Mv elements; key r's element
j at flat element r*d + j, see `hw/qk.py`), written through ``load`` while the pipeline is idle:
one word a beat, ``{target: 0 = K / 1 = V, addr, data}``. A *run* is a packet of queries on ``q``
(one beat per query, ``last`` on the run's final query). The run-time registers ``n`` (keys),
``d_log2`` (head dimension d = 2**d_log2), ``k_v`` (keys kept per query by value pruning;
``k_v >= n`` disables pruning), ``renorm`` and the score scaling ``shift``, ``scale``,
``post_shift`` (see `golden.attention.score_params`) are sampled with the run's first query.

Per query, in order, the pipeline emits:

* on ``o``: the output row ``{data: Mv elements (d used, the rest 0), last, error}`` in
  S(data_width + out_frac_bits), v's scale / 2**out_frac_bits; ``last`` on the run's final query;
* on ``probs``: the probabilities of all n keys (U0.16, S a beat, row-stream shape), the stream
  the token-importance accumulators will take;
* on ``row``: ``{p_max, max, esum}``, the row's largest probability (the progressive-quantization
  trigger), its largest dot product and the softmax sum.

All three must be consumed (tie ``ready`` high to ignore one). The outputs equal
`golden.attention.attention` bit for bit.

Overlap: the Q.K array reads K for query i+1 while query i is in the softmax (three banks:
ingest, exponent, normalise), the top-k engine and prob x V, so with d >= M/S both multiplier
arrays stay busy. A FIFO of capacity/S beats holds the kept pairs between the top-k engine and
prob x V, so the engine can take the next row while prob x V works through the last one. With
pruning the engine is then the limit (it reads a row at S values a cycle and selects before it
takes the next): about n/S + 1.5-3 n/P + k_v/S + 40 cycles a row. ``macs`` counts useful multiply-accumulates (Q.K and prob x V),
``cycles`` the cycles from a run's first query to its last output: utilization is
macs / ((M + Mv) * cycles).

Bad input: n = 0, n over capacity, a head dimension out of range, k_v = 0 end the run at once:
its queries are consumed, one ``o`` beat with ``error = last = 1`` is emitted (nothing on
``probs`` or ``row``), and ``error``/``error_code`` hold until the next run starts. A ``load``
beyond the buffer is dropped and sets ``error`` with ``BAD_LOAD``. Reset returns to idle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig, Config

from .pv import ProbV
from .qk import QKArray
from .rowstream import Fork, Narrow, Widen, row_layout
from .skid import SkidBuffer
from .softmax import Softmax
from .topk import Mode, TopK

__all__ = ["ErrorCode", "Attention", "load_layout", "query_layout", "output_layout",
           "row_info_layout"]


class ErrorCode(enum.Enum, shape=3):
    NONE = 0
    N_ZERO = 1            # n = 0
    N_OVER_CAPACITY = 2   # n > capacity
    BAD_HEAD_DIM = 3      # d_log2 outside 3..log2(min(M, Mv))
    K_V_ZERO = 4          # value pruning asked to keep no key
    BAD_LOAD = 5          # a load address beyond the buffer


def _log2(x: int) -> int:
    return x.bit_length() - 1


def load_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "target": 1,
        "addr": range(cfg.capacity),
        "data": data.ArrayLayout(signed(cfg.data_width), max(cfg.qk_mults, cfg.pv_mults)),
    })


def query_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.data_width), cfg.qk_mults),
        "last": 1,
    })


def output_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.out_width), cfg.pv_mults),
        "last": 1,
        "error": 1,
    })


def row_info_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "p_max": unsigned(cfg.prob_bits),
        "max": signed(cfg.dot_width),
        "esum": unsigned(cfg.esum_width),
    })


def pair_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({"index": unsigned(cfg.index_width),
                              "prob": unsigned(cfg.prob_bits)})


class Attention(wiring.Component):
    """The query pipeline; see the module docstring for the contract.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig or Config (its ``attention`` field is used)
    """

    def __init__(self, *, config):
        if isinstance(config, Config):
            config = config.attention
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig or a Config, not {config!r}")
        self.cfg = cfg = config
        d_log2_max = _log2(min(cfg.qk_mults, cfg.pv_mults))
        self.d_log2_max = d_log2_max
        super().__init__({
            "load": In(stream.Signature(load_layout(cfg))),
            "q": In(stream.Signature(query_layout(cfg))),
            "o": Out(stream.Signature(output_layout(cfg))),
            "probs": Out(stream.Signature(row_layout(unsigned(cfg.prob_bits), cfg.softmax_lanes))),
            "row": Out(stream.Signature(row_info_layout(cfg))),
            # run-time registers, sampled with a run's first query
            "n": In(range(cfg.capacity + 1)),
            "d_log2": In(range(8)),
            "k_v": In(range(cfg.capacity + 1)),
            "renorm": In(1),
            "shift": In(range(cfg.dot_width + 1)),
            "scale": In(unsigned(cfg.scale_bits)),
            "post_shift": In(range(cfg.post_shift_max + 1)),
            # status
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "cycles": Out(32),
            "macs": Out(32),
            "queries": Out(32),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        S, P = cfg.softmax_lanes, cfg.topk_lanes

        # ---------------------------------------------------------------- buffers
        m.submodules.kmem = kmem = Memory(
            shape=data.ArrayLayout(signed(cfg.data_width), cfg.qk_mults),
            depth=cfg.capacity, init=[])
        m.submodules.vmem = vmem = Memory(
            shape=data.ArrayLayout(signed(cfg.data_width), cfg.pv_mults),
            depth=cfg.capacity, init=[])
        kw = kmem.write_port()
        vw = vmem.write_port()

        # ---------------------------------------------------------------- units
        m.submodules.qk = qk = QKArray(config=cfg)
        m.submodules.softmax = sm = Softmax(config=cfg)
        m.submodules.topk = topk = TopK(config=cfg.topk, statistical=False)
        m.submodules.pv = pv = ProbV(config=cfg)
        prob_row = row_layout(unsigned(cfg.prob_bits), S)
        m.submodules.fork = fork = Fork(prob_row, ways=2)
        # registered readies on both sides of the fork, so that no ready path runs from prob x V
        # or the top-k engine through the fork into the softmax (timing on the FPGA)
        m.submodules.sm_skid = sm_skid = SkidBuffer(prob_row)
        m.submodules.f1_skid = f1_skid = SkidBuffer(prob_row)
        m.submodules.widen = widen = Widen(signed(cfg.topk.value_width), in_lanes=S,
                                           out_lanes=P)
        m.submodules.narrow = narrow = Narrow(pair_layout(cfg), in_lanes=P, out_lanes=S)
        kept_layout = row_layout(pair_layout(cfg), S)
        m.submodules.kept_fifo = kept_fifo = SyncFIFOBuffered(
            width=kept_layout.size, depth=max(4, cfg.capacity // S))
        kept = Signal(kept_layout)
        wiring.connect(m, qk.k_rd, kmem.read_port())
        wiring.connect(m, pv.v_rd, vmem.read_port())

        # ---------------------------------------------------------------- run registers
        r_n = Signal.like(self.n)
        r_d_log2 = Signal.like(self.d_log2)
        r_k_v = Signal.like(self.k_v)
        r_renorm = Signal()
        r_shift = Signal.like(self.shift)
        r_scale = Signal.like(self.scale)
        r_post = Signal.like(self.post_shift)
        prune = Signal()       # k_v < n: the probabilities go through the top-k engine
        m.d.comb += [
            qk.n.eq(r_n), qk.d_log2.eq(r_d_log2),
            sm.shift.eq(r_shift), sm.scale.eq(r_scale), sm.post_shift.eq(r_post),
            pv.d_log2.eq(r_d_log2), pv.renorm.eq(r_renorm),
            topk.k.eq(r_k_v), topk.mode.eq(Mode.EXACT),
        ]

        # ---------------------------------------------------------------- run control
        bad = Signal()
        code = Signal(ErrorCode)
        with m.If(self.n == 0):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.N_ZERO)]
        with m.Elif(self.n > cfg.capacity):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.N_OVER_CAPACITY)]
        with m.Elif((self.d_log2 < 3) | (self.d_log2 > self.d_log2_max)):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.BAD_HEAD_DIM)]
        with m.Elif(self.k_v == 0):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.K_V_ZERO)]

        q_in = Signal(32)          # queries of this run accepted
        q_out = Signal(32)         # outputs of this run emitted
        q_last_seen = Signal()     # the run's final query was accepted
        cycles = Signal(32)
        mac_base = Signal(32)
        done = Signal()
        error = Signal()
        error_code = Signal(ErrorCode)
        mac_now = Signal(32)
        m.d.comb += mac_now.eq(qk.macs + pv.macs)
        m.d.comb += [self.done.eq(done), self.error.eq(error), self.error_code.eq(error_code),
                     self.cycles.eq(cycles), self.macs.eq(mac_now - mac_base),
                     self.queries.eq(q_out)]

        # load port: only while idle
        load = self.load.payload
        in_range = Signal()
        m.d.comb += in_range.eq(load.addr < cfg.capacity)

        o = self.o
        with m.FSM(name="run"):
            with m.State("IDLE"):
                m.d.comb += self.load.ready.eq(1)
                with m.If(self.load.valid):
                    with m.If(in_range):
                        m.d.comb += [
                            kw.addr.eq(load.addr), vw.addr.eq(load.addr),
                            kw.en.eq(load.target == 0), vw.en.eq(load.target == 1),
                        ]
                        for i in range(cfg.qk_mults):
                            m.d.comb += kw.data[i].eq(load.data[i])
                        for i in range(cfg.pv_mults):
                            m.d.comb += vw.data[i].eq(load.data[i])
                    with m.Else():
                        m.d.sync += [error.eq(1), error_code.eq(ErrorCode.BAD_LOAD),
                                     done.eq(0)]
                with m.Elif(self.q.valid):
                    m.d.sync += [done.eq(0), error.eq(0), error_code.eq(ErrorCode.NONE),
                                 q_in.eq(0), q_out.eq(0), q_last_seen.eq(0), cycles.eq(0),
                                 mac_base.eq(mac_now)]
                    with m.If(bad):
                        m.d.sync += [error.eq(1), error_code.eq(code)]
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += [r_n.eq(self.n), r_d_log2.eq(self.d_log2),
                                     r_k_v.eq(self.k_v), r_renorm.eq(self.renorm),
                                     r_shift.eq(self.shift), r_scale.eq(self.scale),
                                     r_post.eq(self.post_shift), prune.eq(self.k_v < self.n)]
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += [
                    qk.q.valid.eq(self.q.valid & ~q_last_seen),
                    qk.q.payload.eq(self.q.payload.data),
                    self.q.ready.eq(qk.q.ready & ~q_last_seen),
                ]
                with m.If(self.q.valid & self.q.ready):
                    m.d.sync += q_in.eq(q_in + 1)
                    with m.If(self.q.payload.last):
                        m.d.sync += q_last_seen.eq(1)
                final = Signal()
                m.d.comb += [
                    final.eq(q_last_seen & (q_out + 1 == q_in)),
                    o.valid.eq(pv.o.valid),
                    pv.o.ready.eq(o.ready),
                    o.payload.last.eq(final),
                ]
                for i in range(cfg.pv_mults):
                    m.d.comb += o.payload.data[i].eq(pv.o.payload.data[i])
                with m.If(o.valid & o.ready):
                    m.d.sync += q_out.eq(q_out + 1)
                    with m.If(final):
                        m.d.sync += done.eq(1)
                        m.next = "IDLE"
            with m.State("DRAIN"):
                # a bad run: swallow its queries, then one error beat
                m.d.comb += [self.busy.eq(1), self.q.ready.eq(~q_last_seen)]
                with m.If(self.q.valid & self.q.ready & self.q.payload.last):
                    m.d.sync += q_last_seen.eq(1)
                with m.If(q_last_seen):
                    m.d.comb += [o.valid.eq(1), o.payload.last.eq(1), o.payload.error.eq(1)]
                    with m.If(o.ready):
                        m.d.sync += done.eq(1)
                        m.next = "IDLE"

        # ---------------------------------------------------------------- datapath
        wiring.connect(m, qk.o, sm.i)
        wiring.connect(m, sm.o, sm_skid.i)
        wiring.connect(m, sm_skid.o, fork.i)
        wiring.connect(m, fork.o1, f1_skid.i)
        wiring.connect(m, fork.o0, wiring.flipped(self.probs))
        # the row info stream: p_max, max, esum (error rows cannot occur: n <= capacity)
        m.d.comb += [
            self.row.valid.eq(sm.row.valid),
            sm.row.ready.eq(self.row.ready),
            self.row.payload.p_max.eq(sm.row.payload.p_max),
            self.row.payload.max.eq(sm.row.payload.max),
            self.row.payload.esum.eq(sm.row.payload.esum),
        ]

        # probabilities -> (pruning) top-k -> pairs -> prob x V
        f1 = f1_skid.o
        # index of the first lane of the current beat within its row
        base = Signal(cfg.index_width + 1)
        with m.If(f1.valid & f1.ready):
            m.d.sync += base.eq(Mux(f1.payload.last, 0, base + S))
        with m.If(prune):
            m.d.comb += [
                widen.i.valid.eq(f1.valid), f1.ready.eq(widen.i.ready),
                widen.i.payload.count.eq(f1.payload.count),
                widen.i.payload.last.eq(f1.payload.last),
            ]
            for j in range(S):
                m.d.comb += widen.i.payload.data[j].eq(f1.payload.data[j])
            m.d.comb += [
                topk.i.valid.eq(widen.o.valid), widen.o.ready.eq(topk.i.ready),
                topk.i.payload.count.eq(widen.o.payload.count),
                topk.i.payload.last.eq(widen.o.payload.last),
            ]
            for j in range(P):
                m.d.comb += topk.i.payload.data[j].eq(widen.o.payload.data[j])
            m.d.comb += [
                narrow.i.valid.eq(topk.o.valid), topk.o.ready.eq(narrow.i.ready),
                narrow.i.payload.count.eq(topk.o.payload.count),
                narrow.i.payload.last.eq(topk.o.payload.last),
            ]
            for j in range(P):
                m.d.comb += [narrow.i.payload.data[j].index.eq(topk.o.payload.index[j]),
                             narrow.i.payload.data[j].prob.eq(topk.o.payload.value[j])]
            # the kept pairs wait here, so that the top-k engine empties into the FIFO at S pairs
            # a cycle and takes the next row while prob x V still works through this one
            m.d.comb += [
                kept_fifo.w_en.eq(narrow.o.valid), narrow.o.ready.eq(kept_fifo.w_rdy),
                kept_fifo.w_data.eq(narrow.o.payload),
                pv.i.valid.eq(kept_fifo.r_rdy), kept_fifo.r_en.eq(pv.i.ready),
                kept.eq(kept_fifo.r_data),
                pv.i.payload.count.eq(kept.count),
                pv.i.payload.last.eq(kept.last),
            ]
            for j in range(S):
                m.d.comb += [pv.i.payload.index[j].eq(kept.data[j].index),
                             pv.i.payload.prob[j].eq(kept.data[j].prob)]
        with m.Else():
            m.d.comb += [
                pv.i.valid.eq(f1.valid), f1.ready.eq(pv.i.ready),
                pv.i.payload.count.eq(f1.payload.count),
                pv.i.payload.last.eq(f1.payload.last),
            ]
            for j in range(S):
                m.d.comb += [pv.i.payload.index[j].eq(base + j),
                             pv.i.payload.prob[j].eq(f1.payload.data[j])]
        return m

