"""The query pipeline: Q.K -> softmax -> local value pruning (top-k) -> prob x V.

Contract
--------
K and V live in on-chip buffers (depth ``capacity`` words of M resp. Mv elements; key r's element
j at flat element r*d + j, see `hw/qk.py`); K as two bit planes, the MSB plane (``msb_bits`` of
`MemoryConfig`) and the LSB plane (the other data_width - msb_bits bits). They are written
through ``load`` while the pipeline is idle (one whole word a beat, ``{target: 0 = K (both
planes) / 1 = V, addr, data}``), or at any time through the fetch unit's write streams
``k_msb_wr``, ``k_lsb_wr``, ``v_wr`` (`hw.fetch.write_layout`: a word address, data, enables
of 8-element groups; ``load`` has priority). A *run* is a packet of queries on ``q`` (one beat
per query, ``last`` on the run's final query). The run-time registers ``n`` (keys), ``d_log2``
(head dimension d = 2**d_log2), ``k_v`` (keys kept per query by value pruning; ``k_v >= n``
disables pruning), ``renorm``, the score scaling ``shift``, ``scale``, ``post_shift`` (see
`golden.attention.score_params`) and the progressive quantization registers ``pq``, ``tau``,
``fill_mid`` are sampled with the run's first query, and so is ``bank``: with ``bank = 1`` the
run's keys and values sit in the upper half of the buffers (from word capacity/2 on; the fetch
unit fills one half while a run reads the other, `hw.core.Core`), which needs n <= capacity/2.

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
last one. The selector (`hw/value_select.py`) loads row i + 1 while it selects row i; a row
costs it 2 + (L - 1)(n/P + 4) cycles of selection and an output pass of one cycle per P keys
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

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig, Config, MemoryConfig

from .fetch import write_layout
from .pv import ProbV
from .qk import QKArray
from .rowstream import Fork, row_layout
from .skid import SkidBuffer
from .softmax import Softmax
from .value_select import ValueSelect, pair_layout

__all__ = ["ErrorCode", "Attention", "load_layout", "query_layout", "output_layout",
           "row_info_layout", "run_registers", "two_banks", "TAG_BITS"]


class ErrorCode(enum.Enum, shape=3):
    NONE = 0
    N_ZERO = 1            # n = 0
    N_OVER_CAPACITY = 2   # n > capacity
    BAD_HEAD_DIM = 3      # d_log2 outside 3..log2(min(M, Mv))
    K_V_ZERO = 4          # value pruning asked to keep no key
    BAD_LOAD = 5          # a load address beyond the buffer
    BAD_BANK = 6          # bank = 1 with n > capacity/2 (or a buffer without two banks)


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


#: bits of a query's tag (its number in the run, wrapping)
TAG_BITS = 16
#: queries held by the issuer's ring (accepted, last pass not yet issued)
RING = 4


def output_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.out_width), cfg.pv_mults),
        "tag": unsigned(TAG_BITS),
        "last": 1,
        "error": 1,
    })


def row_info_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "p_max": unsigned(cfg.prob_bits),
        "max": signed(cfg.dot_width),
        "esum": unsigned(cfg.esum_width),
        "tag": unsigned(TAG_BITS),
        "full": 1,
        "refetch": 1,
    })


def run_registers(cfg: AttentionConfig) -> dict:
    """The pipeline's run-time register ports other than ``n`` (sampled with a run's first
    query), as signature members; `hw.core.Core` takes the same ones for its jobs."""
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


def two_banks(cfg: AttentionConfig) -> bool:
    """The buffers split into two banks of capacity/2 words (what ``bank`` needs): each holds
    the keys and values of a run of up to capacity/2 keys at any head dimension."""
    return cfg.capacity % 2 == 0


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
        d_log2_max = _log2(min(cfg.qk_mults, cfg.pv_mults))
        self.d_log2_max = d_log2_max
        M, Mv, N = cfg.qk_mults, cfg.pv_mults, cfg.capacity
        super().__init__({
            "load": In(stream.Signature(load_layout(cfg))),
            "k_msb_wr": In(stream.Signature(write_layout(M, self.msb_bits, True, N))),
            "k_lsb_wr": In(stream.Signature(write_layout(M, self.lsb_bits, False, N))),
            "v_wr": In(stream.Signature(write_layout(Mv, cfg.data_width, True, N))),
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
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "cycles": Out(32),
            "macs": Out(32),
            "queries": Out(32),
            "refetched": Out(32),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        S, M, Mv, W = cfg.softmax_lanes, cfg.qk_mults, cfg.pv_mults, cfg.data_width
        MB, LB = self.msb_bits, self.lsb_bits

        # ---------------------------------------------------------------- buffers
        m.submodules.kmsb = kmsb = Memory(shape=data.ArrayLayout(signed(MB), M),
                                          depth=cfg.capacity, init=[])
        m.submodules.klsb = klsb = Memory(shape=data.ArrayLayout(unsigned(LB), M),
                                          depth=cfg.capacity, init=[])
        m.submodules.vmem = vmem = Memory(shape=data.ArrayLayout(signed(W), Mv),
                                          depth=cfg.capacity, init=[])
        m.submodules.qring = qring = Memory(shape=data.ArrayLayout(signed(W), M), depth=RING,
                                            init=[])
        kmw = kmsb.write_port(granularity=8)
        klw = klsb.write_port(granularity=8)
        vw = vmem.write_port(granularity=8)
        qw = qring.write_port()
        # the ring is read asynchronously from a registered address (`rd_addr`, set as a pass is
        # issued, read the next cycle: the same timing as a synchronous port addressed by the
        # issue logic, without that logic's comparisons on the path into every LUT-RAM cell)
        qr = qring.read_port(domain="comb")

        # ---------------------------------------------------------------- units
        m.submodules.qk = qk = QKArray(config=cfg)
        m.submodules.softmax = sm = Softmax(config=cfg)
        m.submodules.vsel = vsel = ValueSelect(config=cfg)
        # the probabilities of a softmax row sum below 2**16 + 2 + n/2 (each is rounded from
        # e * recip, whose sum is below 2**16 + 2: `golden.attention.softmax`), so below 2**17
        # for any capacity the config allows: prob x V's accumulators need 17 bits of sum
        assert (1 << cfg.prob_bits) + 2 + cfg.capacity // 2 < (1 << (cfg.prob_bits + 1))
        m.submodules.pv = pv = ProbV(config=cfg, p_sum_bits=cfg.prob_bits + 1)
        prob_row = row_layout(unsigned(cfg.prob_bits), S)
        m.submodules.fork = fork = Fork(prob_row, ways=2)
        # registered readies on both sides of the fork, so that no ready path runs from prob x V
        # or the value-pruning selector through the fork into the softmax (timing on the FPGA)
        m.submodules.sm_skid = sm_skid = SkidBuffer(prob_row)
        m.submodules.f1_skid = f1_skid = SkidBuffer(prob_row)
        kept_layout = row_layout(pair_layout(cfg), S)
        m.submodules.kept_fifo = kept_fifo = SyncFIFOBuffered(
            width=kept_layout.size, depth=max(4, cfg.capacity // S))
        kept = Signal(kept_layout)
        # the run's bank: word offset capacity/2 in the K and the V buffer, or 0
        k_off = Signal(range(cfg.capacity))
        v_off = k_off
        pow2 = cfg.capacity & (cfg.capacity - 1) == 0

        def at(addr, off):
            # in a power-of-two buffer the bank's offset is one address bit above every
            # address of the run (n*d/M <= n <= offset): an OR, no carry chain on the address
            return (addr | off) if pow2 else (addr + off)
        # The buffers' read ports are transparent for their write ports: a word read while it
        # is written (the fetch unit fills a V row of a word whose other rows are in use) gives
        # the new bytes, which no run reads before they are complete anyway. Yosys builds the
        # old-data behaviour of a non-transparent port out of block RAM by delaying every write
        # a cycle in the fabric (two flip-flops and a multiplexer per bit, on the path into the
        # multipliers); transparency costs it about half of that.
        vrp = vmem.read_port(transparent_for=(vw,))
        m.d.comb += [vrp.addr.eq(at(pv.v_rd.addr, v_off)), vrp.en.eq(pv.v_rd.en),
                     pv.v_rd.data.eq(vrp.data)]

        # K read: the MSB plane with the LSB plane (full-precision pass) or the fill
        krm = kmsb.read_port(transparent_for=(kmw,))
        krl = klsb.read_port(transparent_for=(klw,))
        pass_full = Signal()        # the pass the Q.K array is reading K for
        full_d = Signal()           # ... one cycle later, aligned with the read data
        m.d.sync += full_d.eq(pass_full)
        r_fill = Signal()
        fill = Mux(r_fill, 1 << (LB - 1), 0)
        m.d.comb += [krm.addr.eq(at(qk.k_rd.addr, k_off)), krm.en.eq(qk.k_rd.en),
                     krl.addr.eq(at(qk.k_rd.addr, k_off)), krl.en.eq(qk.k_rd.en)]
        for e in range(M):
            m.d.comb += qk.k_rd.data[e].eq(Cat(Mux(full_d, krl.data[e], fill), krm.data[e]))

        # ---------------------------------------------------------------- run registers
        r_n = Signal.like(self.n)
        r_d_log2 = Signal.like(self.d_log2)
        r_k_v = Signal.like(self.k_v)
        r_renorm = Signal()
        r_shift = Signal.like(self.shift)
        r_scale = Signal.like(self.scale)
        r_post = Signal.like(self.post_shift)
        r_pq = Signal()
        r_tau = Signal.like(self.tau)
        prune = Signal()       # k_v < n: the probabilities go through the selector
        r_vwait = Signal()     # V rows are fetched per query (see `kept`, `v_done`)
        acks = Signal(32)      # v_done pulses of the run
        pv_started = Signal(32)
        pv_mid = Signal()      # prob x V has taken a query's first beat, not its last
        m.d.comb += [
            qk.n.eq(r_n), qk.d_log2.eq(r_d_log2),
            sm.shift.eq(r_shift), sm.scale.eq(r_scale), sm.post_shift.eq(r_post),
            pv.d_log2.eq(r_d_log2), pv.renorm.eq(r_renorm),
            vsel.k.eq(r_k_v),
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
        with m.Elif(self.bank & ((self.n > cfg.capacity // 2) | (not two_banks(cfg)))):
            m.d.comb += [bad.eq(1), code.eq(ErrorCode.BAD_BANK)]

        q_in = Signal(32)          # queries of this run accepted
        q_out = Signal(32)         # outputs of this run emitted
        q_last_seen = Signal()     # the run's final query was accepted
        cycles = Signal(32)
        mac_base = Signal(32)
        refetched = Signal(32)
        done = Signal()
        error = Signal()
        error_code = Signal(ErrorCode)
        mac_now = Signal(32)
        m.d.comb += mac_now.eq(qk.macs + pv.macs)
        m.d.comb += [self.done.eq(done), self.error.eq(error), self.error_code.eq(error_code),
                     self.cycles.eq(cycles), self.macs.eq(mac_now - mac_base),
                     self.queries.eq(q_out), self.refetched.eq(refetched)]

        # buffer writes: `load` (whole words, idle only) has priority over the write streams
        load = self.load.payload
        in_range = Signal()
        m.d.comb += in_range.eq(load.addr < cfg.capacity)
        loading = Signal()
        for wr_in, port in ((self.k_msb_wr, kmw), (self.k_lsb_wr, klw), (self.v_wr, vw)):
            m.d.comb += [wr_in.ready.eq(~loading),
                         port.addr.eq(wr_in.payload.addr), port.data.eq(wr_in.payload.data)]
            with m.If(wr_in.valid & ~loading):
                m.d.comb += port.en.eq(wr_in.payload.en)

        # the issuer: queries into the ring, passes out of it (see the module docstring)
        m_next = Signal(32)        # next query to issue its first pass
        f_next = Signal(32)        # next query whose decision is to be acted on (pq)
        m.submodules.dec = dec = SyncFIFOBuffered(width=1, depth=4)   # refetch decisions
        rd_pend, rd_full = Signal(), Signal()
        rd_tag = Signal(TAG_BITS)
        rd_addr = Signal(range(RING))
        m.d.comb += qr.addr.eq(rd_addr)
        iq_v, iq_full = Signal(), Signal()
        iq_tag = Signal(TAG_BITS)
        iq_data = Signal.like(qr.data)
        m.submodules.pf = pf = SyncFIFOBuffered(width=TAG_BITS + 1, depth=8)  # passes in flight
        m.submodules.ff = ff = SyncFIFOBuffered(width=TAG_BITS, depth=16)     # final passes

        # small differences of those counters (each at most RING, as the ring bounds them), in
        # 3-bit arithmetic instead of 32-bit compares on the issue path
        occ = Signal(range(RING + 1))      # q_in - (f_next with pq, else m_next)
        q_wr, m_inc, f_inc = Signal(), Signal(), Signal()
        m_waiting = Signal()               # m_next < q_in
        m_ahead = Signal(3)                # m_next - f_next
        m.d.comb += [m_waiting.eq((q_in[:3] - m_next[:3])[:3] != 0),
                     m_ahead.eq((m_next[:3] - f_next[:3])[:3])]

        o = self.o
        with m.FSM(name="run"):
            with m.State("IDLE"):
                m.d.comb += self.load.ready.eq(1)
                with m.If(self.load.valid):
                    m.d.comb += loading.eq(1)
                    with m.If(in_range):
                        m.d.comb += [kmw.addr.eq(load.addr), klw.addr.eq(load.addr),
                                     vw.addr.eq(load.addr)]
                        with m.If(load.target == 0):
                            m.d.comb += [kmw.en.eq(-1), klw.en.eq(-1)]
                        with m.Else():
                            m.d.comb += vw.en.eq(-1)
                        for i in range(M):
                            m.d.comb += [kmw.data[i].eq(load.data[i][LB:]),
                                         klw.data[i].eq(load.data[i][:LB])]
                        for i in range(Mv):
                            m.d.comb += vw.data[i].eq(load.data[i])
                    with m.Else():
                        m.d.sync += [error.eq(1), error_code.eq(ErrorCode.BAD_LOAD),
                                     done.eq(0)]
                with m.Elif(self.q.valid):
                    m.d.sync += [done.eq(0), error.eq(0), error_code.eq(ErrorCode.NONE),
                                 q_in.eq(0), q_out.eq(0), q_last_seen.eq(0), cycles.eq(0),
                                 mac_base.eq(mac_now), refetched.eq(0), m_next.eq(0),
                                 f_next.eq(0), occ.eq(0)]
                    with m.If(bad):
                        m.d.sync += [error.eq(1), error_code.eq(code)]
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += [r_n.eq(self.n), r_d_log2.eq(self.d_log2),
                                     r_k_v.eq(self.k_v), r_renorm.eq(self.renorm),
                                     r_shift.eq(self.shift), r_scale.eq(self.scale),
                                     r_post.eq(self.post_shift), prune.eq(self.k_v < self.n),
                                     r_pq.eq(self.pq), r_tau.eq(self.tau),
                                     r_fill.eq(self.fill_mid), r_vwait.eq(self.v_wait),
                                     acks.eq(0), pv_started.eq(0), pv_mid.eq(0),
                                     k_off.eq(Mux(self.bank, cfg.capacity // 2, 0))]
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                # queries into the ring while it has room
                # (`occ` = q_in - freed, freed = f_next with pq, else m_next: a register, so
                # that the ring's write enable, which reaches every LUT-RAM cell of the ring,
                # comes from a short path)
                m.d.comb += [self.q.ready.eq(~q_last_seen & (occ < RING)),
                             qw.addr.eq(q_in[:2]), qw.data.eq(self.q.payload.data)]
                with m.If(self.q.valid & self.q.ready):
                    m.d.comb += [qw.en.eq(1), q_wr.eq(1)]
                    m.d.sync += q_in.eq(q_in + 1)
                    with m.If(self.q.payload.last):
                        m.d.sync += q_last_seen.eq(1)
                # passes out of it: one read of the ring, then the pass register `iq`
                free = Signal()
                m.d.comb += free.eq(~rd_pend & ~iq_v)
                with m.If(r_pq):
                    # M(j + 2) goes before the decision of query j + 1 is acted on (and waits
                    # for query j + 2 to arrive, unless the run has no such query)
                    m_due = Signal()
                    m.d.comb += m_due.eq((m_ahead < 2) & ~(q_last_seen & ~m_waiting))
                    with m.If(m_due):
                        with m.If(free & m_waiting):
                            m.d.sync += [rd_pend.eq(1), rd_full.eq(0), rd_tag.eq(m_next),
                                         rd_addr.eq(m_next[:2]), m_next.eq(m_next + 1)]
                            m.d.comb += m_inc.eq(1)
                    with m.Elif(dec.r_rdy):
                        with m.If(dec.r_data[0]):
                            m.d.comb += self.lsb_needed.eq(~self.lsb_ready)
                            with m.If(free & self.lsb_ready):
                                m.d.comb += dec.r_en.eq(1)
                                m.d.sync += [rd_pend.eq(1), rd_full.eq(1), rd_tag.eq(f_next),
                                             rd_addr.eq(f_next[:2]), f_next.eq(f_next + 1)]
                                m.d.comb += f_inc.eq(1)
                        with m.Else():
                            m.d.comb += [dec.r_en.eq(1), f_inc.eq(1)]
                            m.d.sync += f_next.eq(f_next + 1)
                with m.Else():
                    with m.If(free & m_waiting):
                        m.d.comb += self.lsb_needed.eq(~self.lsb_ready)
                        with m.If(self.lsb_ready):
                            m.d.sync += [rd_pend.eq(1), rd_full.eq(1), rd_tag.eq(m_next),
                                         rd_addr.eq(m_next[:2]), m_next.eq(m_next + 1)]
                            m.d.comb += m_inc.eq(1)
                # the ring's occupancy follows the counters it stands for
                m.d.sync += occ.eq(occ + q_wr - Mux(r_pq, f_inc, m_inc))
                # outputs
                final = Signal()
                m.d.comb += [
                    final.eq(q_last_seen & (q_out + 1 == q_in)),
                    o.valid.eq(pv.o.valid),
                    pv.o.ready.eq(o.ready),
                    o.payload.last.eq(final),
                    o.payload.tag.eq(ff.r_data),
                ]
                for i in range(cfg.pv_mults):
                    m.d.comb += o.payload.data[i].eq(pv.o.payload.data[i])
                with m.If(o.valid & o.ready):
                    m.d.comb += ff.r_en.eq(1)
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

        # the pass register feeds the Q.K array
        with m.If(rd_pend):
            m.d.sync += [rd_pend.eq(0), iq_v.eq(1), iq_data.eq(qr.data), iq_tag.eq(rd_tag),
                         iq_full.eq(rd_full)]
        m.d.comb += [qk.q.valid.eq(iq_v & pf.w_rdy), qk.q.payload.eq(iq_data),
                     pf.w_data.eq(Cat(iq_tag, iq_full))]
        with m.If(qk.q.valid & qk.q.ready):
            m.d.comb += pf.w_en.eq(1)
            m.d.sync += [iq_v.eq(0), pass_full.eq(iq_full)]

        # ---------------------------------------------------------------- datapath
        wiring.connect(m, qk.o, sm.i)
        # the gate: each pass's row beat decides whether its probabilities go on (final pass)
        # or are dropped (an MSB pass below tau: the query runs again at full precision)
        pf_tag = pf.r_data[:TAG_BITS]
        pf_full = pf.r_data[TAG_BITS]
        g_busy = Signal()          # a row's probabilities are passing or being dropped
        g_drop = Signal()
        drop = Signal()
        m.d.comb += drop.eq(r_pq & ~pf_full & (sm.row.payload.p_max < r_tau))
        row_ok = Signal()
        m.d.comb += row_ok.eq(~g_busy & pf.r_rdy & ff.w_rdy & dec.w_rdy)
        rp = self.row.payload
        m.d.comb += [
            self.row.valid.eq(sm.row.valid & row_ok),
            sm.row.ready.eq(self.row.ready & row_ok),
            rp.p_max.eq(sm.row.payload.p_max), rp.max.eq(sm.row.payload.max),
            rp.esum.eq(sm.row.payload.esum), rp.tag.eq(pf_tag), rp.full.eq(pf_full),
            rp.refetch.eq(drop),
        ]
        with m.If(self.row.valid & self.row.ready):
            m.d.comb += [pf.r_en.eq(1), ff.w_en.eq(~drop), ff.w_data.eq(pf_tag),
                         dec.w_en.eq(r_pq & ~pf_full), dec.w_data.eq(drop)]
            m.d.sync += [g_busy.eq(1), g_drop.eq(drop)]
            with m.If(drop):
                m.d.sync += refetched.eq(refetched + 1)
        with m.If(g_busy):
            with m.If(g_drop):
                m.d.comb += sm.o.ready.eq(1)
            with m.Else():
                m.d.comb += [sm_skid.i.valid.eq(sm.o.valid), sm.o.ready.eq(sm_skid.i.ready),
                             sm_skid.i.payload.eq(sm.o.payload)]
            with m.If(sm.o.valid & sm.o.ready & sm.o.payload.last):
                m.d.sync += g_busy.eq(0)
        wiring.connect(m, sm_skid.o, fork.i)
        wiring.connect(m, fork.o1, f1_skid.i)
        wiring.connect(m, fork.o0, wiring.flipped(self.probs))

        # probabilities -> (pruning) selector -> pairs -> prob x V
        f1 = f1_skid.o
        # index of the first lane of the current beat within its row
        base = Signal(cfg.index_width + 1)
        with m.If(f1.valid & f1.ready):
            m.d.sync += base.eq(Mux(f1.payload.last, 0, base + S))
        # the pairs of each final pass: from the selector (pruning) or every key
        pairs = Signal(kept_layout)
        pairs_v, pairs_r = Signal(), Signal()
        with m.If(prune):
            wiring.connect(m, f1, vsel.i)
            m.d.comb += [pairs_v.eq(vsel.o.valid), vsel.o.ready.eq(pairs_r),
                         pairs.eq(vsel.o.payload)]
        with m.Else():
            m.d.comb += [pairs_v.eq(f1.valid), f1.ready.eq(pairs_r),
                         pairs.count.eq(f1.payload.count), pairs.last.eq(f1.payload.last)]
            for j in range(S):
                m.d.comb += [pairs.data[j].index.eq(base + j),
                             pairs.data[j].prob.eq(f1.payload.data[j])]

        # With ``v_wait`` the kept indices also leave on ``kept`` (for the V fetch) and prob x V
        # starts a query only when ``v_done`` has pulsed for it (its V rows are in the buffer);
        # the pairs then always wait in the FIFO, so that the fetch can take them all first.
        with m.If(self.v_done):
            m.d.sync += acks.eq(acks + 1)
        kp = self.kept.payload
        m.d.comb += [kp.count.eq(pairs.count), kp.last.eq(pairs.last)]
        for j in range(S):
            m.d.comb += kp.data[j].eq(pairs.data[j].index)
        via_fifo = Signal()
        m.d.comb += via_fifo.eq(prune | r_vwait)
        with m.If(via_fifo):
            # the kept pairs wait here, so that the selector empties into the FIFO at S
            # pairs a cycle and takes the next row while prob x V still works through this one
            m.d.comb += [
                self.kept.valid.eq(pairs_v & r_vwait & kept_fifo.w_rdy),
                pairs_r.eq(kept_fifo.w_rdy & (~r_vwait | self.kept.ready)),
                kept_fifo.w_en.eq(pairs_v & pairs_r), kept_fifo.w_data.eq(pairs),
                kept.eq(kept_fifo.r_data),
            ]
            go = Signal()
            m.d.comb += go.eq(~r_vwait | pv_mid | (acks != pv_started))
            m.d.comb += [pv.i.valid.eq(kept_fifo.r_rdy & go),
                         kept_fifo.r_en.eq(pv.i.ready & go),
                         self.v_stall.eq(kept_fifo.r_rdy & ~go)]
            with m.If(pv.i.valid & pv.i.ready):
                m.d.sync += pv_mid.eq(~kept.last)
                with m.If(~pv_mid):
                    m.d.sync += pv_started.eq(pv_started + 1)
        with m.Else():
            m.d.comb += [kept.eq(pairs), pv.i.valid.eq(pairs_v), pairs_r.eq(pv.i.ready)]
        m.d.comb += [pv.i.payload.count.eq(kept.count), pv.i.payload.last.eq(kept.last)]
        for j in range(S):
            m.d.comb += [pv.i.payload.index[j].eq(kept.data[j].index),
                         pv.i.payload.prob[j].eq(kept.data[j].prob)]
        return m

