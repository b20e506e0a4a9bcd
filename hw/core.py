"""The memory side around the query pipeline: one head group from DRAM to outputs.

A *job* is one head group (one K/V head of one layer, `golden.progressive`): its surviving
tokens (ascending indices into the group's K and V planes; buffer position i holds survivor i)
and its queries (query head h of the group, row r of that head's Q plane). `Core` fetches what
the schedule of `golden.progressive.run_group` says, through four `hw.fetch.PlaneReader` s that
share the DRAM port (`hw.fetch.DramArbiter`), and runs the queries through `hw.attention.Attention`:

1. the survivors stream in; they are checked (strictly ascending, below ``n_stored``, at most
   ``capacity``), kept in the index buffer, and their K MSB rows fetched (runs of consecutive
   tokens, bursts of ``max_burst`` beats); without progressive quantization (``pq = 0``) their K
   LSB rows too, before the first pass;
2. each query's Q row is fetched (one run) and handed to the pipeline; with ``pq = 1`` the K LSB
   rows of all survivors are fetched once, when the pipeline first asks for them;
3. for each final pass, the V rows of its kept keys that are not yet in the V buffer are fetched
   (runs of consecutive tokens); prob x V starts the query when they are in.

Every output, row beat and probability equals the golden model's, and every tensor's DRAM bytes
equal `GroupResult.dram_bytes` (beats x B, counted per reader: ``beats_*``).

Job registers (sampled with the first survivor): ``n``, ``n_stored``, the plane bases
``k_msb_base``, ``k_lsb_base``, ``v_base`` and ``q_base[h]`` (bytes, B-aligned) and everything
`Attention` samples (``d_log2``, ``k_v``, ``renorm``, ``shift``, ``scale``, ``post_shift``,
``pq``, ``tau``, ``fill_mid``). ``survivors`` carries n beats ``{index, last}`` (``last`` on the
n-th); ``queries`` one beat per query ``{head, row, last}``.

Bad input ends the job with one ``o`` beat with ``error = last = 1`` and ``error_code`` (its
queries and survivors are consumed, what was fetched is dropped): n = 0 or over capacity, a
survivor not above the one before or not below ``n_stored``, a misaligned base, a query head
outside the group, a DRAM error beat, or an error of the pipeline itself (``ATTENTION``, with
`Attention`'s code on ``attention_error``). Reset returns to idle.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from .attention import (Attention, ErrorCode as AttnError, output_layout, row_info_layout,
                        run_registers)
from .fetch import DramArbiter, PlaneReader, req_layout, resp_layout, run_layout
from .rowstream import row_layout

__all__ = ["Core", "CoreError", "Coalescer", "survivor_layout", "query_cmd_layout"]


class CoreError(enum.Enum, shape=3):
    NONE = 0
    N_ZERO = 1
    N_OVER_CAPACITY = 2
    BAD_INDEX = 3          # survivors not strictly ascending or not below n_stored
    MISALIGNED = 4         # a plane base not a multiple of the beat
    BAD_HEAD = 5           # a query head outside the group
    DRAM = 6               # an error beat from the memory
    ATTENTION = 7          # the query pipeline's own error (see attention_error)


def survivor_layout(token_bits: int) -> data.StructLayout:
    return data.StructLayout({"index": unsigned(token_bits), "last": 1})


def query_cmd_layout(token_bits: int, group: int) -> data.StructLayout:
    return data.StructLayout({"head": range(max(2, group)), "row": unsigned(token_bits),
                              "last": 1})


class Coalescer(wiring.Component):
    """(token, position) items, tokens ascending, into runs of consecutive tokens.

    ``i``: ``{token, pos, last}``; a run grows while the next token is the run's end (and it has
    fewer than ``capacity`` rows); ``last`` closes the current run after its item, and so does
    ``flush`` (in a cycle without an item). ``o``: runs ``{start, count, dst}``
    (`hw.fetch.run_layout`), each once its end is known. ``busy``: a run is held."""

    def __init__(self, *, token_bits: int, capacity: int):
        self.token_bits, self.capacity = token_bits, capacity
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "token": unsigned(token_bits), "pos": range(capacity), "last": 1}))),
            "o": Out(stream.Signature(run_layout(token_bits, capacity))),
            "flush": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        have = Signal()
        start = Signal(self.token_bits)
        count = Signal(range(self.capacity + 1))
        dst = Signal(range(self.capacity))
        closing = Signal()              # the held run is complete (waits for o.ready)
        o = self.o
        m.d.comb += [o.payload.start.eq(start), o.payload.count.eq(count),
                     o.payload.dst.eq(dst), self.busy.eq(have)]
        it = self.i.payload
        extends = Signal()
        m.d.comb += extends.eq(have & ~closing & (it.token == start + count)
                               & (count < self.capacity))
        m.d.comb += o.valid.eq(have & (closing | (self.i.valid & ~extends)))
        # an item is taken when it extends the open run, or when the run it ends has left
        m.d.comb += self.i.ready.eq(~closing & (~have | extends | o.ready))
        with m.If(o.valid & o.ready):
            m.d.sync += [have.eq(0), closing.eq(0)]
        with m.If(self.i.valid & self.i.ready):
            with m.If(extends):
                m.d.sync += count.eq(count + 1)
            with m.Else():
                m.d.sync += [have.eq(1), start.eq(it.token), count.eq(1), dst.eq(it.pos)]
            m.d.sync += closing.eq(it.last)
        with m.Elif(self.flush & have & ~(o.valid & o.ready)):
            m.d.sync += closing.eq(1)
        return m


class Core(wiring.Component):
    """One head group from DRAM to outputs; see the module docstring.

    Parameters (keyword-only)
    -------------------------
    config : Config
        ``attention`` (the pipeline), ``memory`` (beats, bursts, outstanding, msb_bits).
    group : int
        Query heads per head group (1..8; SmolLM2 has 3, MiniLM 1).
    token_bits : int
        Bits of a token index (rows of a plane; default 16).
    addr_width : int
        DRAM byte address bits (default 32).
    """

    def __init__(self, *, config: Config, group: int = 1, token_bits: int = 16,
                 addr_width: int = 32):
        if not isinstance(config, Config):
            self._MustUse__silence = True
            raise TypeError(f"config must be a Config, not {config!r}")
        if not (isinstance(group, int) and 1 <= group <= 8):
            self._MustUse__silence = True
            raise ValueError(f"group must be an integer from 1 to 8, not {group!r}")
        self.config = config
        self.group, self.token_bits, self.addr_width = group, token_bits, addr_width
        att, mem = config.attention, config.memory
        self.lsb_bits = mem.lsb_bits(att.data_width)
        B = mem.beat_bytes
        super().__init__({
            "dram_req": Out(stream.Signature(req_layout(addr_width, mem.max_burst))),
            "dram_resp": In(stream.Signature(resp_layout(B))),
            "survivors": In(stream.Signature(survivor_layout(token_bits))),
            "queries": In(stream.Signature(query_cmd_layout(token_bits, group))),
            "o": Out(stream.Signature(output_layout(att))),
            "probs": Out(stream.Signature(row_layout(unsigned(att.prob_bits),
                                                     att.softmax_lanes))),
            "row": Out(stream.Signature(row_info_layout(att))),
            # job registers
            "n": In(range(att.capacity + 2)),
            "n_stored": In(unsigned(token_bits + 1)),
            "k_msb_base": In(addr_width),
            "k_lsb_base": In(addr_width),
            "v_base": In(addr_width),
            "q_base": In(data.ArrayLayout(unsigned(addr_width), group)),
            **run_registers(att),
            # status
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(CoreError),
            "attention_error": Out(AttnError),
            "refetched": Out(32),
            "lsb_fetched": Out(1),
            "cycles": Out(32),
            "beats_k_msb": Out(32),
            "beats_k_lsb": Out(32),
            "beats_v": Out(32),
            "beats_q": Out(32),
            # cycles of the job the datapath waited for memory: for the K MSB rows (nothing
            # can start), for a query (the pipeline would take one; its Q row is not fetched
            # yet, or the host has not sent it), for the K LSB rows (a full-precision pass is
            # due), for V rows (prob x V has a query's pairs)
            "wait_k": Out(32),
            "wait_q": Out(32),
            "wait_lsb": Out(32),
            "wait_v": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        att_cfg, mem = cfg.attention, cfg.memory
        M, Mv, W, N, S = (att_cfg.qk_mults, att_cfg.pv_mults, att_cfg.data_width,
                          att_cfg.capacity, att_cfg.softmax_lanes)
        B = mem.beat_bytes
        LB = B.bit_length() - 1
        TB, AW, G = self.token_bits, self.addr_width, self.group

        m.submodules.att = att = Attention(config=cfg)
        m.submodules.arb = arb = DramArbiter(ports=4, memory=mem, addr_width=AW)
        wiring.connect(m, arb.dram_req, wiring.flipped(self.dram_req))
        wiring.connect(m, wiring.flipped(self.dram_resp), arb.dram_resp)

        def reader(name, bits, signed_, elems):
            r = PlaneReader(bits=bits, is_signed=signed_, elems=elems, depth=N, memory=mem,
                            capacity=N, addr_width=AW, token_bits=TB)
            m.submodules[name] = r
            return r

        rk = reader("rd_k_msb", mem.msb_bits, True, M)
        rl = reader("rd_k_lsb", self.lsb_bits, False, M)
        rv = reader("rd_v", W, True, Mv)
        rq = reader("rd_q", W, True, M)
        readers = (rk, rl, rv, rq)
        r_dl = Signal.like(self.d_log2)
        for i, r in enumerate(readers):
            wiring.connect(m, r.req, arb.req(i))
            wiring.connect(m, arb.resp(i), r.resp)
            m.d.comb += r.d_log2.eq(r_dl)
        wiring.connect(m, rk.wr, att.k_msb_wr)
        wiring.connect(m, rl.wr, att.k_lsb_wr)
        wiring.connect(m, rv.wr, att.v_wr)
        m.d.comb += [self.beats_k_msb.eq(rk.beats), self.beats_k_lsb.eq(rl.beats),
                     self.beats_v.eq(rv.beats), self.beats_q.eq(rq.beats)]

        # job registers (the pipeline's too: it samples them with its first query)
        r_n = Signal.like(self.n)
        r_stored = Signal.like(self.n_stored)
        r_kb, r_lb, r_vb = Signal(AW), Signal(AW), Signal(AW)
        r_qb = Signal(data.ArrayLayout(unsigned(AW), G))
        r_pq = Signal()
        m.d.comb += [rk.base.eq(r_kb), rl.base.eq(r_lb), rv.base.eq(r_vb)]
        att_regs = [name for name in run_registers(att_cfg) if name != "d_log2"]
        latch = [r_n.eq(self.n), r_stored.eq(self.n_stored), r_kb.eq(self.k_msb_base),
                 r_lb.eq(self.k_lsb_base), r_vb.eq(self.v_base), r_qb.eq(self.q_base),
                 r_pq.eq(self.pq), r_dl.eq(self.d_log2)]
        for name in att_regs:
            reg = Signal.like(getattr(self, name), name=f"r_{name}")
            latch.append(reg.eq(getattr(self, name)))
            m.d.comb += getattr(att, name).eq(reg)
        m.d.comb += [att.n.eq(r_n), att.d_log2.eq(r_dl), att.v_wait.eq(1)]

        # the index buffer: survivor i's token at address i
        m.submodules.index = index = Memory(shape=unsigned(TB), depth=N, init=[])
        iw = index.write_port()
        ir_l = index.read_port()        # LSB fetch scan
        ir_v = index.read_port()        # V fetch lookups

        error = Signal()
        code = Signal(CoreError)
        done = Signal()
        cycles = Signal(32)
        m.d.comb += [self.error.eq(error), self.error_code.eq(code), self.done.eq(done),
                     self.cycles.eq(cycles), self.refetched.eq(att.refetched),
                     self.attention_error.eq(att.error_code)]
        mis = Signal()
        if LB:
            bases = [self.k_msb_base, self.k_lsb_base, self.v_base,
                     *[self.q_base[h] for h in range(G)]]
            m.d.comb += mis.eq(_any([b[:LB] != 0 for b in bases]))

        # ---------------------------------------------------------------- survivors -> K MSB
        m.submodules.co_k = co_k = Coalescer(token_bits=TB, capacity=N)
        wiring.connect(m, co_k.o, rk.cmd)
        s_cnt = Signal(range(N + 2))      # survivors accepted
        s_prev = Signal(TB + 1)           # last survivor + 1 (0 before the first)
        s_bad = Signal()
        s_seen = Signal()                 # the survivors' last beat was taken
        q_seen = Signal()                 # the queries' last beat was taken
        sv = self.survivors.payload

        # ---------------------------------------------------------------- LSB fetch
        m.submodules.co_l = co_l = Coalescer(token_bits=TB, capacity=N)
        wiring.connect(m, co_l.o, rl.cmd)
        l_state = Signal(range(4))        # 0 idle, 1 scanning, 2 draining, 3 in the buffer
        l_pos = Signal(range(N + 1))
        l_rd_v = Signal()
        l_rd_pos = Signal(range(N))
        l_rd_last = Signal()
        l_start = Signal()
        l_hold = Signal()
        m.d.comb += [att.lsb_ready.eq(l_state == 3), self.lsb_fetched.eq(l_state == 3),
                     l_hold.eq(l_rd_v & ~co_l.i.ready),
                     ir_l.addr.eq(Mux(l_hold, l_rd_pos, l_pos)), ir_l.en.eq(1),
                     co_l.i.valid.eq(l_rd_v), co_l.i.payload.token.eq(ir_l.data),
                     co_l.i.payload.pos.eq(l_rd_pos), co_l.i.payload.last.eq(l_rd_last)]
        with m.If(co_l.i.valid & co_l.i.ready):
            m.d.sync += l_rd_v.eq(0)
        with m.If(l_start & (l_state == 0)):
            m.d.sync += [l_state.eq(1), l_pos.eq(0)]
        with m.If((l_state == 1) & ~l_hold):
            # read position l_pos; (token, pos) goes to the coalescer the cycle after
            m.d.sync += [l_rd_v.eq(1), l_rd_pos.eq(l_pos), l_rd_last.eq(l_pos + 1 == r_n),
                         l_pos.eq(l_pos + 1)]
            with m.If(l_pos + 1 == r_n):
                m.d.sync += l_state.eq(2)
        with m.If((l_state == 2) & ~l_rd_v & ~co_l.busy & ~rl.busy):
            m.d.sync += l_state.eq(3)

        # ---------------------------------------------------------------- queries -> Q rows
        # two staging words: the next query's row is fetched while the pipeline takes this one
        q_word = [[Signal(W, name=f"q_word{sl}_{e}") for e in range(M)] for sl in range(2)]
        qs = self.queries
        q_full = Signal(2)                # staging word holds a fetched row
        q_lastf = Signal(2)               # ... the job's last query
        f_slot = Signal()                 # the word the next fetch fills
        o_slot = Signal()                 # the word offered to the pipeline next
        fetching = Signal()               # a row is being fetched into f_slot
        f_last = Signal()
        q_cmd_v = Signal()
        q_head = Signal(range(max(2, G)))
        q_row = Signal(TB)
        # position f_slot * M / d puts the row in word f_slot
        q_dst = Signal.like(rq.cmd.payload.dst)
        with m.Switch(r_dl):
            for k in range(3, (M.bit_length() - 1) + 1):
                with m.Case(k):
                    m.d.comb += q_dst.eq(f_slot << (M.bit_length() - 1 - k))
        # (the payload in one assignment: a constant field driven on its own becomes an
        # `always @*` with nothing to wake it in the emitted Verilog, and stays X/0 there)
        cw = run_layout(TB, N)["count"].width
        m.d.comb += [rq.cmd.valid.eq(q_cmd_v),
                     rq.cmd.payload.eq(Cat(q_row, Const(1, cw), q_dst)),   # start, count, dst
                     rq.wr.ready.eq(1),
                     rq.base.eq(Array(r_qb[h] for h in range(G))[q_head])]
        with m.If(rq.wr.valid):
            for sl in range(2):
                with m.If(rq.wr.payload.addr == sl):
                    for g in range(M // 8):
                        with m.If(rq.wr.payload.en[g]):
                            m.d.sync += [q_word[sl][8 * g + i].eq(rq.wr.payload.data[8 * g + i])
                                         for i in range(8)]
        with m.If(rq.cmd.valid & rq.cmd.ready):
            m.d.sync += q_cmd_v.eq(0)
        for e in range(M):
            m.d.comb += att.q.payload.data[e].eq(Mux(o_slot, q_word[1][e], q_word[0][e]))
        m.d.comb += att.q.payload.last.eq(Mux(o_slot, q_lastf[1], q_lastf[0]))

        # ---------------------------------------------------------------- kept -> V rows
        m.submodules.co_v = co_v = Coalescer(token_bits=TB, capacity=N)
        wiring.connect(m, co_v.o, rv.cmd)
        resident = Signal(N)
        kb = att.kept.payload
        v_lane = Signal(range(S + 1))
        v_rd_v = Signal()
        v_rd_pos = Signal(range(N))
        v_end = Signal()                  # the query's kept beats are all taken
        lane_idx = Signal(range(N))
        m.d.comb += lane_idx.eq(Array(kb.data[j] for j in range(S))[v_lane])
        lane_in = Signal()
        m.d.comb += lane_in.eq(v_lane < kb.count)
        missing = Signal()
        m.d.comb += missing.eq(lane_in & ~resident.bit_select(lane_idx, 1))
        all_res = Signal()                # every lane of the beat resident: one cycle
        m.d.comb += all_res.eq(_all([(kb.count <= j) | resident.bit_select(kb.data[j], 1)
                                     for j in range(S)]))
        v_hold = Signal()
        m.d.comb += [v_hold.eq(v_rd_v & ~co_v.i.ready),
                     ir_v.addr.eq(Mux(v_hold, v_rd_pos, lane_idx)), ir_v.en.eq(1),
                     co_v.i.valid.eq(v_rd_v), co_v.i.payload.token.eq(ir_v.data),
                     co_v.i.payload.pos.eq(v_rd_pos), co_v.i.payload.last.eq(0)]
        with m.If(co_v.i.valid & co_v.i.ready):
            m.d.sync += v_rd_v.eq(0)
        with m.If(att.kept.valid & ~v_end & ~v_hold):
            with m.If(((v_lane == 0) & all_res) | ~lane_in):
                m.d.comb += att.kept.ready.eq(1)
                m.d.sync += [v_lane.eq(0), v_end.eq(kb.last)]
            with m.Else():
                with m.If(missing):
                    m.d.sync += [v_rd_v.eq(1), v_rd_pos.eq(lane_idx),
                                 resident.bit_select(lane_idx, 1).eq(1)]
                m.d.sync += v_lane.eq(v_lane + 1)
        # the query's last missing row closes its run; its rows in, the query may go on
        m.d.comb += co_v.flush.eq(v_end & ~v_rd_v)
        with m.If(v_end & ~v_rd_v & ~co_v.busy & ~rv.busy):
            m.d.comb += att.v_done.eq(1)
            m.d.sync += v_end.eq(0)

        # ---------------------------------------------------------------- queries
        # the first query's row is fetched while K loads; the pipeline takes it in RUN
        q_on = Signal()
        q_offer = Signal()
        with m.If(q_on):
            with m.If(~fetching & ~Mux(f_slot, q_full[1], q_full[0])):
                m.d.comb += qs.ready.eq(~q_seen)
                with m.If(qs.valid & qs.ready):
                    m.d.sync += [q_cmd_v.eq(1), q_row.eq(qs.payload.row), fetching.eq(1),
                                 f_last.eq(qs.payload.last), q_seen.eq(qs.payload.last)]
                    with m.If(qs.payload.head >= G):           # runs as head 0, flagged
                        m.d.sync += [error.eq(1), code.eq(CoreError.BAD_HEAD), q_head.eq(0)]
                    with m.Else():
                        m.d.sync += q_head.eq(qs.payload.head)
            with m.If(fetching & ~q_cmd_v & ~rq.busy):
                m.d.sync += [fetching.eq(0), f_slot.eq(~f_slot)]
                for sl in range(2):
                    with m.If(f_slot == sl):
                        m.d.sync += [q_full[sl].eq(1), q_lastf[sl].eq(f_last)]
            with m.If(Mux(o_slot, q_full[1], q_full[0]) & q_offer):
                m.d.comb += att.q.valid.eq(1)
                with m.If(att.q.ready):
                    m.d.sync += o_slot.eq(~o_slot)
                    for sl in range(2):
                        with m.If(o_slot == sl):
                            m.d.sync += q_full[sl].eq(0)

        # ---------------------------------------------------------------- memory waits
        waits = {name: Signal(32, name=f"w_{name}") for name in ("k", "q", "lsb", "v")}
        for name, w in waits.items():
            m.d.comb += getattr(self, f"wait_{name}").eq(w)
        in_run = Signal()
        q_seen_done = Signal()            # every query of the job was handed to the pipeline
        m.d.comb += q_seen_done.eq(q_seen & ~fetching & (q_full == 0))
        with m.If(in_run):
            with m.If(att.q.ready & ~att.q.valid & ~q_seen_done):
                m.d.sync += waits["q"].eq(waits["q"] + 1)
            with m.If(att.lsb_needed):
                m.d.sync += waits["lsb"].eq(waits["lsb"] + 1)
            with m.If(att.v_stall):
                m.d.sync += waits["v"].eq(waits["v"] + 1)

        # ---------------------------------------------------------------- job control
        o = self.o
        r_prefetch_v = Signal()           # no value pruning: every V row is needed, fetch now
        idle_fetch = Signal()
        m.d.comb += idle_fetch.eq(~co_k.busy & ~co_l.busy & ~co_v.busy
                                  & ~_any([r.busy for r in readers]))
        with m.FSM(name="job"):
            with m.State("IDLE"):
                with m.If(self.survivors.valid | self.queries.valid):
                    m.d.sync += [done.eq(0), error.eq(0), code.eq(CoreError.NONE),
                                 cycles.eq(0), s_cnt.eq(0), s_prev.eq(0), s_bad.eq(0),
                                 s_seen.eq(self.n == 0), q_seen.eq(0), resident.eq(0),
                                 l_state.eq(0), v_lane.eq(0), v_end.eq(0), q_full.eq(0),
                                 f_slot.eq(0), o_slot.eq(0), fetching.eq(0),
                                 r_prefetch_v.eq(self.k_v >= self.n), *latch,
                                 *[w.eq(0) for w in waits.values()]]
                    with m.If(self.n == 0):
                        m.d.sync += [error.eq(1), code.eq(CoreError.N_ZERO)]
                        m.next = "DRAIN"
                    with m.Elif(self.n > N):
                        m.d.sync += [error.eq(1), code.eq(CoreError.N_OVER_CAPACITY)]
                        m.next = "DRAIN"
                    with m.Elif(mis):
                        m.d.sync += [error.eq(1), code.eq(CoreError.MISALIGNED)]
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "SURVIVORS"
            with m.State("SURVIVORS"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += q_on.eq(1)
                ok = Signal()
                # the V and K LSB coalescers take the survivor too when their rows are all
                # needed (no value pruning; no progressive quantization): one beat, all at once
                rdy_v, rdy_l = Signal(), Signal()
                m.d.comb += [ok.eq((sv.index >= s_prev) & (sv.index < r_stored) & ~s_bad),
                             rdy_v.eq(~r_prefetch_v | co_v.i.ready),
                             rdy_l.eq(r_pq | co_l.i.ready),
                             self.survivors.ready.eq(Mux(ok, co_k.i.ready & rdy_v & rdy_l, 1)),
                             co_k.i.valid.eq(self.survivors.valid & ok & rdy_v & rdy_l),
                             co_k.i.payload.token.eq(sv.index),
                             co_k.i.payload.pos.eq(s_cnt),
                             co_k.i.payload.last.eq(sv.last | (s_cnt + 1 == r_n)),
                             iw.addr.eq(s_cnt), iw.data.eq(sv.index)]
                with m.If(~r_pq):
                    m.d.comb += [co_l.i.valid.eq(self.survivors.valid & ok & co_k.i.ready
                                                 & rdy_v),
                                 co_l.i.payload.token.eq(sv.index),
                                 co_l.i.payload.pos.eq(s_cnt),
                                 co_l.i.payload.last.eq(sv.last | (s_cnt + 1 == r_n))]
                with m.If(r_prefetch_v):
                    m.d.comb += [co_v.i.valid.eq(self.survivors.valid & ok & co_k.i.ready
                                                 & rdy_l),
                                 co_v.i.payload.token.eq(sv.index),
                                 co_v.i.payload.pos.eq(s_cnt),
                                 co_v.i.payload.last.eq(sv.last | (s_cnt + 1 == r_n))]
                with m.If(self.survivors.valid & self.survivors.ready):
                    m.d.comb += iw.en.eq(ok)
                    with m.If(r_prefetch_v & ok):
                        m.d.sync += resident.bit_select(s_cnt, 1).eq(1)
                    m.d.sync += [s_cnt.eq(s_cnt + 1), s_prev.eq(sv.index + 1),
                                 s_seen.eq(sv.last)]
                    with m.If(~ok | (sv.last & (s_cnt + 1 != r_n))
                              | (~sv.last & (s_cnt + 1 == r_n))):
                        m.d.sync += s_bad.eq(1)
                    with m.If(sv.last | (s_cnt + 1 == r_n)):
                        m.d.sync += l_state.eq(Mux(r_pq, 0, 2))   # 2: LSB rows on their way
                        m.next = "K_WAIT"
            with m.State("K_WAIT"):
                m.d.comb += [self.busy.eq(1), q_on.eq(1)]
                m.d.sync += [cycles.eq(cycles + 1), waits["k"].eq(waits["k"] + 1)]
                with m.If(s_bad):
                    m.d.sync += [error.eq(1), code.eq(CoreError.BAD_INDEX)]
                    m.next = "DRAIN"
                with m.Elif(~co_k.busy & ~rk.busy):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += l_start.eq(att.lsb_needed)
                m.d.comb += [q_on.eq(1), q_offer.eq(1), in_run.eq(1)]
                wiring.connect(m, att.o, wiring.flipped(o))
                with m.If(o.valid & o.ready & o.payload.last):
                    m.d.sync += done.eq(1)
                    with m.If(o.payload.error):
                        m.d.sync += [error.eq(1), code.eq(CoreError.ATTENTION)]
                    m.next = "IDLE"
                with m.If(_any([r.error for r in readers])):
                    m.d.sync += [error.eq(1), code.eq(CoreError.DRAM)]
            with m.State("DRAIN"):
                # the rest of the job's survivors and queries are swallowed, what was fetched
                # finishes, then one error beat
                m.d.comb += [self.busy.eq(1), self.survivors.ready.eq(~s_seen),
                             self.queries.ready.eq(~q_seen),
                             co_k.flush.eq(1), co_l.flush.eq(1), co_v.flush.eq(1)]
                with m.If(self.survivors.valid & self.survivors.ready & sv.last):
                    m.d.sync += s_seen.eq(1)
                with m.If(self.queries.valid & self.queries.ready & qs.payload.last):
                    m.d.sync += q_seen.eq(1)
                with m.If(s_seen & q_seen & idle_fetch):
                    m.d.comb += [o.valid.eq(1), o.payload.error.eq(1), o.payload.last.eq(1)]
                    with m.If(o.ready):
                        m.d.sync += done.eq(1)
                        m.next = "IDLE"
        wiring.connect(m, att.probs, wiring.flipped(self.probs))
        wiring.connect(m, att.row, wiring.flipped(self.row))
        return m


def _all(terms):
    out = terms[0]
    for t in terms[1:]:
        out = out & t
    return out


def _any(terms):
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out
