"""The memory side around the query pipeline: head groups from DRAM to outputs, two in flight.

A *job* is one head group (one K/V head of one layer, `golden.progressive`): a descriptor on
``job`` (`job_layout`: ``n``, ``n_stored``, the plane bases ``k_msb_base``, ``k_lsb_base``,
``v_base``, ``q_base[h]`` (bytes, B-aligned) and the pipeline's run registers ``d_log2``,
``k_v``, ``renorm``, ``shift``, ``scale``, ``post_shift``, ``pq``, ``tau``, ``fill_mid``), its n
surviving tokens on ``survivors`` (ascending indices into the group's K and V planes, ``last``
on the n-th; buffer position i holds survivor i) and its queries on ``queries`` (one beat
``{head, row, last}`` per query: row ``row`` of query head ``head``'s Q plane). Jobs follow each
other on the three streams in the same order. `Core` fetches what the schedule of
`golden.progressive.run_group` says, through four `hw.fetch.PlaneReader` s that share the DRAM
port (`hw.fetch.DramArbiter`), and runs the queries through `hw.attention.Attention`:

1. the survivors stream in; they are checked (strictly ascending, below ``n_stored``, at most
   ``capacity``), kept in the index buffer, and their K MSB rows fetched (runs of consecutive
   tokens, bursts of ``max_burst`` beats); without progressive quantization (``pq = 0``) their K
   LSB rows too, and without value pruning (``k_v >= n``) their V rows, both as the survivors
   arrive (scans of the index buffer);
2. each query's Q row is fetched (one run, up to `Q_SLOTS` rows in flight) and handed to the
   pipeline; with ``pq = 1`` the K LSB rows of all survivors are fetched once, when the
   pipeline first asks for them;
3. for each final pass, the V rows of its kept keys that are not yet in the V buffer are fetched
   (runs of consecutive tokens); prob x V starts the query when they are in.

Double buffering: the K and V buffers are two banks of capacity/2 words (`Attention`'s
``bank``). A job of n <= capacity/2 keys takes the bank the running job does not use, so its
survivors, K (and V, LSB) rows are fetched while the job before it computes; a larger job takes
both banks and waits for the one before it to finish. Two jobs are in flight at most (one
fetching, one running); Q rows of the next job are fetched as soon as its descriptor is in.

Every output, row beat and probability equals the golden model's, and every tensor's DRAM bytes
equal `GroupResult.dram_bytes` (beats x B, counted per reader: ``beats_*``, since reset).

Bad input ends the job with one ``o`` beat with ``error = last = 1`` (its survivors and queries
are consumed, nothing it fetched is used) and sets ``error``/``error_code`` (`CoreError`, which
hold until the next job ends): n = 0 or over capacity, a misaligned base, a head dimension out
of range, k_v = 0 (all four refused before any fetch), a survivor not above the one before or not
below ``n_stored``, a query head outside the group, a DRAM error beat, or an error of the
pipeline itself (``ATTENTION``, with `Attention`'s code on ``attention_error``). The jobs after it
run as usual. Reset returns to idle.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig, Config

from .attention import Attention, output_layout, row_info_layout, run_registers, two_banks
from .attention import ErrorCode as AttnError
from .fetch import DramArbiter, PlaneReader, req_layout, resp_layout, run_layout
from .rowstream import row_layout

__all__ = ["Core", "CoreError", "Coalescer", "Scanner", "survivor_layout", "query_cmd_layout",
           "job_layout", "Q_SLOTS"]

#: Q rows the core fetches ahead of the pipeline (each one DRAM run)
Q_SLOTS = 4


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


def survivor_layout(token_bits: int) -> data.StructLayout:
    return data.StructLayout({"index": unsigned(token_bits), "last": 1})


def query_cmd_layout(token_bits: int, group: int) -> data.StructLayout:
    return data.StructLayout({"head": range(max(2, group)), "row": unsigned(token_bits),
                              "last": 1})


def job_layout(cfg: AttentionConfig, group: int, token_bits: int = 16,
               addr_width: int = 32) -> data.StructLayout:
    """A job descriptor (see the module docstring); the run registers have the shapes of
    `hw.attention.run_registers`."""
    fields = {
        "n": unsigned(token_bits + 1),
        "n_stored": unsigned(token_bits + 1),
        "k_msb_base": unsigned(addr_width),
        "k_lsb_base": unsigned(addr_width),
        "v_base": unsigned(addr_width),
        "q_base": data.ArrayLayout(unsigned(addr_width), group),
    }
    for name, member in run_registers(cfg).items():
        fields[name] = member.shape
    return data.StructLayout(fields)


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
        rd_v = Signal()                     # an item read, waiting for o.ready
        rd_pos = Signal(range(N))
        rd_last = Signal()
        hold = Signal()
        o = self.o
        # while an item waits, its address is read again so that rd_data stays valid
        m.d.comb += [hold.eq(rd_v & ~o.ready),
                     self.rd_addr.eq(base + Mux(hold, rd_pos, pos)),
                     o.valid.eq(rd_v), o.payload.token.eq(self.rd_data),
                     o.payload.pos.eq(rd_pos), o.payload.last.eq(rd_last),
                     self.busy.eq(active | rd_v)]
        with m.If(o.valid & o.ready):
            m.d.sync += rd_v.eq(0)
        with m.If(active & ~hold & (pos < self.limit) & ~self.abort):
            m.d.sync += [rd_v.eq(1), rd_pos.eq(pos), rd_last.eq(pos + 1 == count),
                         pos.eq(pos + 1)]
            with m.If(pos + 1 == count):
                m.d.sync += active.eq(0)
        with m.If(self.abort):
            m.d.sync += active.eq(0)
        with m.If(self.start & ~active & ~rd_v):
            m.d.sync += [active.eq(self.count != 0), base.eq(self.base), count.eq(self.count),
                         pos.eq(0)]
        return m


class Coalescer(wiring.Component):
    """(token, position) items, tokens ascending, into runs of consecutive tokens.

    ``i``: ``{token, pos, last}``; a run grows while the next token is the run's end (and it has
    fewer than ``capacity`` rows); ``last`` closes the current run after its item, and so does
    ``flush`` (in a cycle without an item). ``o``: runs ``{start, count, dst}``
    (`hw.fetch.run_layout`), each once its end is known. ``busy``: a run is held."""

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
    """Head groups from DRAM to outputs, two in flight; see the module docstring.

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

    Status (counters since reset, wrapping): ``jobs_done``, ``busy_cycles`` (a job in flight),
    ``refetched`` (rows dropped for a full-precision pass), ``beats_*`` (DRAM beats per tensor)
    and the memory waits: ``wait_k`` (the pipeline is idle, the next job's K MSB rows are not
    in), ``wait_q`` (the pipeline would take a query whose Q row is not fetched yet, or not sent
    by the host), ``wait_lsb`` (a full-precision pass waits for the K LSB rows), ``wait_v``
    (prob x V has a query's pairs, its V rows are not in).
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
            "job": In(stream.Signature(job_layout(att, group, token_bits, addr_width))),
            "survivors": In(stream.Signature(survivor_layout(token_bits))),
            "queries": In(stream.Signature(query_cmd_layout(token_bits, group))),
            "o": Out(stream.Signature(output_layout(att))),
            "probs": Out(stream.Signature(row_layout(unsigned(att.prob_bits),
                                                     att.softmax_lanes))),
            "row": Out(stream.Signature(row_info_layout(att))),
            # status
            "busy": Out(1),
            "jobs_done": Out(32),
            "error": Out(1),
            "error_code": Out(CoreError),
            "attention_error": Out(AttnError),
            "refetched": Out(32),
            "busy_cycles": Out(32),
            "beats_k_msb": Out(32),
            "beats_k_lsb": Out(32),
            "beats_v": Out(32),
            "beats_q": Out(32),
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
        LM = M.bit_length() - 1
        TB, AW, G = self.token_bits, self.addr_width, self.group
        TWO = two_banks(att_cfg)
        HALF = N // 2
        d_max = min(M, Mv).bit_length() - 1
        pow2 = N & (N - 1) == 0

        def word(addr, hi):
            """A buffer word address in the job's bank (upper half when ``hi``)."""
            off = Mux(hi, HALF, 0)
            return (addr | off) if pow2 else (addr + off)

        m.submodules.att = att = Attention(config=cfg)
        m.submodules.arb = arb = DramArbiter(ports=4, memory=mem, addr_width=AW)
        wiring.connect(m, arb.dram_req, wiring.flipped(self.dram_req))
        wiring.connect(m, wiring.flipped(self.dram_resp), arb.dram_resp)

        def reader(name, bits, signed_, elems, depth=N):
            r = PlaneReader(bits=bits, is_signed=signed_, elems=elems, depth=depth, memory=mem,
                            capacity=N, addr_width=AW, token_bits=TB)
            m.submodules[name] = r
            return r

        rk = reader("rd_k_msb", mem.msb_bits, True, M)
        rl = reader("rd_k_lsb", self.lsb_bits, False, M)
        rv = reader("rd_v", W, True, Mv)
        rq = reader("rd_q", W, True, M)
        readers = (rk, rl, rv, rq)
        for i, r in enumerate(readers):
            wiring.connect(m, r.req, arb.req(i))
            wiring.connect(m, arb.resp(i), r.resp)
        m.d.comb += [self.beats_k_msb.eq(rk.beats), self.beats_k_lsb.eq(rl.beats),
                     self.beats_v.eq(rv.beats), self.beats_q.eq(rq.beats)]
        dram_err = Signal()
        m.d.comb += dram_err.eq(_any([r.error for r in readers]))

        # ---------------------------------------------------------------- job slots
        # job j lives in slot j % 2 from its descriptor to its last output; `fs` is the slot
        # the intake fills, `bs` the slot the pipeline runs, `qs_` the slot whose queries the
        # Q fetch takes
        jl = job_layout(att_cfg, G, TB, AW)
        FREE, INTAKE, READY, RUN, BAD = range(5)
        st = [Signal(range(5), name=f"st{s}") for s in range(2)]
        regs = [Signal(jl, name=f"job{s}") for s in range(2)]
        use = [Signal(2, name=f"use{s}") for s in range(2)]       # banks the job holds
        err = [Signal(name=f"err{s}") for s in range(2)]
        code = [Signal(CoreError, name=f"code{s}") for s in range(2)]
        refused = [Signal(name=f"refused{s}") for s in range(2)]  # bad before any fetch
        q_all = [Signal(name=f"q_all{s}") for s in range(2)]      # its last query was taken
        good = [Signal(range(N + 1), name=f"good{s}") for s in range(2)]   # positions written
        idone = [Signal(name=f"idone{s}") for s in range(2)]      # every survivor written
        sbad = [Signal(name=f"sbad{s}") for s in range(2)]        # a bad survivor was seen
        l_st = [Signal(2, name=f"l_st{s}") for s in range(2)]     # LSB: 0 -, 1 wanted, 2 in
        p_st = [Signal(2, name=f"p_st{s}") for s in range(2)]     # V prefetch: same
        fs, bs, qs_ = Signal(), Signal(), Signal()

        def pick(pair, sel):
            """pair[sel] (two signals or views of one shape)"""
            out = Signal(pair[0].shape())
            m.d.comb += out.eq(Mux(sel, pair[1], pair[0]))
            return out

        def hi_of(sel):
            return pick(use, sel) == 0b10

        def base_of(sel):
            """first index-buffer position of the job in slot `sel`"""
            return Mux(hi_of(sel), HALF, 0)

        fj, bj = pick(regs, fs), pick(regs, bs)

        def on(sel, s):
            return sel == s

        # ---------------------------------------------------------------- index buffer
        m.submodules.index = index = Memory(shape=unsigned(TB), depth=N, init=[])
        iw = index.write_port()
        resident = Signal(N)              # V rows in (or on their way to) the V buffer

        # ---------------------------------------------------------------- front: intake
        m.submodules.co_k = co_k = Coalescer(token_bits=TB, capacity=N)
        wiring.connect(m, co_k.o, rk.cmd)
        m.d.comb += [rk.base.eq(fj.k_msb_base), rk.d_log2.eq(fj.d_log2)]
        # DRAM priority (`DramArbiter.urgent`): what the pipeline waits for goes first: Q rows,
        # the K MSB and LSB rows of the job it is about to run, the V rows of the running job;
        # the next job's prefetches take the rest of the bandwidth
        wiring.connect(m, rk.wr, att.k_msb_wr)
        m.d.comb += att.k_msb_wr.payload.addr.eq(word(rk.wr.payload.addr, hi_of(fs)))
        s_cnt = Signal(range(N + 2))      # survivors of the job taken
        s_prev = Signal(TB + 1)           # last survivor + 1
        s_seen = Signal()                 # the job's last survivor was taken
        sv = self.survivors.payload
        jp = self.job.payload
        mis = Signal()
        if LB:
            m.d.comb += mis.eq(_any([b[:LB] != 0 for b in
                                     [jp.k_msb_base, jp.k_lsb_base, jp.v_base,
                                      *[jp.q_base[h] for h in range(G)]]]))
        j_bad = Signal()
        j_code = Signal(CoreError)
        with m.If(jp.n == 0):
            m.d.comb += [j_bad.eq(1), j_code.eq(CoreError.N_ZERO)]
        with m.Elif(jp.n > N):
            m.d.comb += [j_bad.eq(1), j_code.eq(CoreError.N_OVER_CAPACITY)]
        with m.Elif(mis):
            m.d.comb += [j_bad.eq(1), j_code.eq(CoreError.MISALIGNED)]
        with m.Elif((jp.d_log2 < 3) | (jp.d_log2 > d_max)):
            m.d.comb += [j_bad.eq(1), j_code.eq(CoreError.BAD_HEAD_DIM)]
        with m.Elif(jp.k_v == 0):
            m.d.comb += [j_bad.eq(1), j_code.eq(CoreError.K_V_ZERO)]
        # banks: a job of up to capacity/2 keys takes the half the other slot does not hold
        other_use = pick(use, ~fs)
        j_full = Signal()
        m.d.comb += j_full.eq((jp.n > HALF) | (not TWO))
        j_use = Signal(2)
        m.d.comb += j_use.eq(Mux(j_bad, 0, Mux(j_full, 0b11, Mux(other_use[0], 0b10, 0b01))))
        j_fits = Signal()
        m.d.comb += j_fits.eq((j_use & other_use) == 0)
        half_mask = (1 << HALF) - 1
        pos_base_f = base_of(fs)

        with m.FSM(name="front"):
            with m.State("IDLE"):
                with m.If(pick(st, fs) == FREE):
                    m.d.comb += self.job.ready.eq(j_fits)
                with m.If(self.job.valid & self.job.ready):
                    m.d.sync += [s_cnt.eq(0), s_prev.eq(0), s_seen.eq(0)]
                    for s in range(2):
                        with m.If(on(fs, s)):
                            m.d.sync += [
                                regs[s].eq(jp), use[s].eq(j_use), err[s].eq(j_bad),
                                code[s].eq(j_code), refused[s].eq(j_bad), q_all[s].eq(0),
                                good[s].eq(0), idone[s].eq(0), sbad[s].eq(0),
                                l_st[s].eq(Mux(~j_bad & ~jp.pq, 1, 0)),
                                p_st[s].eq(Mux(~j_bad & (jp.k_v >= jp.n), 1, 0)),
                                st[s].eq(INTAKE)]
                    # the job's positions: no V row of it is in the buffer yet
                    with m.If(j_use == 0b11):
                        m.d.sync += resident.eq(0)
                    with m.Elif(j_use == 0b01):
                        m.d.sync += resident.eq(resident & ~Const(half_mask, N))
                    with m.Elif(j_use == 0b10):
                        m.d.sync += resident.eq(resident & Const(half_mask, N))
                    with m.If(j_bad & (jp.n == 0)):
                        for s in range(2):
                            with m.If(on(fs, s)):
                                m.d.sync += st[s].eq(BAD)
                        m.d.sync += fs.eq(~fs)
                    with m.Elif(j_bad):
                        m.next = "SWALLOW"
                    with m.Else():
                        m.next = "SURVIVORS"
            with m.State("SURVIVORS"):
                ok = Signal()
                last = Signal()
                m.d.comb += [ok.eq((sv.index >= s_prev) & (sv.index < fj.n_stored)
                                   & ~pick(sbad, fs)),
                             last.eq(sv.last | (s_cnt + 1 == fj.n)),
                             self.survivors.ready.eq(Mux(ok, co_k.i.ready, 1)),
                             co_k.i.valid.eq(self.survivors.valid & ok),
                             co_k.i.payload.token.eq(sv.index),
                             co_k.i.payload.pos.eq(s_cnt),
                             co_k.i.payload.last.eq(last),
                             iw.addr.eq(pos_base_f + s_cnt), iw.data.eq(sv.index)]
                with m.If(self.survivors.valid & self.survivors.ready):
                    m.d.comb += iw.en.eq(ok)
                    m.d.sync += [s_cnt.eq(s_cnt + 1), s_prev.eq(sv.index + 1),
                                 s_seen.eq(sv.last)]
                    bad_now = ~ok | (sv.last & (s_cnt + 1 != fj.n)) | (~sv.last
                                                                       & (s_cnt + 1 == fj.n))
                    for s in range(2):
                        with m.If(on(fs, s)):
                            with m.If(ok):
                                m.d.sync += good[s].eq(good[s] + 1)
                            with m.If(bad_now):
                                m.d.sync += sbad[s].eq(1)
                            with m.If(last):
                                m.d.sync += idone[s].eq(1)
                    with m.If(last):
                        m.next = "LOAD"
            with m.State("LOAD"):
                # a bad list: the rest of it is swallowed (the open K run closes); then the K
                # MSB rows are waited for
                with m.If(pick(sbad, fs)):
                    m.d.comb += [self.survivors.ready.eq(~s_seen), co_k.flush.eq(1)]
                    with m.If(self.survivors.valid & sv.last):
                        m.d.sync += s_seen.eq(1)
                with m.If((~pick(sbad, fs) | s_seen) & ~co_k.busy & ~rk.busy):
                    for s in range(2):
                        with m.If(on(fs, s)):
                            with m.If(sbad[s]):
                                m.d.sync += [st[s].eq(BAD), err[s].eq(1),
                                             code[s].eq(CoreError.BAD_INDEX)]
                            with m.Else():
                                m.d.sync += st[s].eq(READY)
                    m.d.sync += fs.eq(~fs)
                    m.next = "IDLE"
            with m.State("SWALLOW"):
                # a refused job: its survivors are consumed up to the one marked last
                m.d.comb += self.survivors.ready.eq(1)
                with m.If(self.survivors.valid & sv.last):
                    for s in range(2):
                        with m.If(on(fs, s)):
                            m.d.sync += st[s].eq(BAD)
                    m.d.sync += fs.eq(~fs)
                    m.next = "IDLE"

        # ---------------------------------------------------------------- K LSB scans
        # one job at a time: the running job's request first (it stalls the pipeline)
        m.submodules.sc_l = sc_l = Scanner(token_bits=TB, capacity=N)
        m.submodules.co_l = co_l = Coalescer(token_bits=TB, capacity=N)
        ir_l = index.read_port()
        m.d.comb += [ir_l.addr.eq(sc_l.rd_addr), ir_l.en.eq(1), sc_l.rd_data.eq(ir_l.data)]
        wiring.connect(m, sc_l.o, co_l.i)
        wiring.connect(m, co_l.o, rl.cmd)
        l_slot = Signal()
        lj = pick(regs, l_slot)
        m.d.comb += [rl.base.eq(lj.k_lsb_base), rl.d_log2.eq(lj.d_log2),
                     sc_l.limit.eq(Mux(pick(idone, l_slot), lj.n, pick(good, l_slot))),
                     sc_l.abort.eq(pick(sbad, l_slot))]
        wiring.connect(m, rl.wr, att.k_lsb_wr)
        m.d.comb += att.k_lsb_wr.payload.addr.eq(word(rl.wr.payload.addr, hi_of(l_slot)))

        # ---------------------------------------------------------------- V prefetch scans
        m.submodules.sc_p = sc_p = Scanner(token_bits=TB, capacity=N)
        m.submodules.co_p = co_p = Coalescer(token_bits=TB, capacity=N)
        ir_p = index.read_port()
        m.d.comb += [ir_p.addr.eq(sc_p.rd_addr), ir_p.en.eq(1), sc_p.rd_data.eq(ir_p.data)]
        wiring.connect(m, sc_p.o, co_p.i)
        p_slot = Signal()
        pj = pick(regs, p_slot)
        m.d.comb += [sc_p.limit.eq(Mux(pick(idone, p_slot), pj.n, pick(good, p_slot))),
                     sc_p.abort.eq(pick(sbad, p_slot))]
        with m.If(sc_p.o.valid & sc_p.o.ready):
            m.d.sync += resident.bit_select(base_of(p_slot) + sc_p.o.payload.pos, 1).eq(1)

        def scan_control(name, sc, co, slot, states, drained):
            """Start a scan for a slot whose state is 1 (wanted), the running job's first;
            state 2 once the scan's runs are all written."""
            with m.FSM(name=name):
                with m.State("IDLE"):
                    want_b = pick(states, bs) == 1
                    want_o = pick(states, ~bs) == 1
                    with m.If(want_b | want_o):
                        nxt = Mux(want_b, bs, ~bs)
                        m.d.sync += slot.eq(nxt)
                        m.next = "START"
                with m.State("START"):
                    m.d.comb += [sc.start.eq(1), sc.base.eq(base_of(slot)),
                                 sc.count.eq(pick(regs, slot).n)]
                    m.next = "SCAN"
                with m.State("SCAN"):
                    m.d.comb += co.flush.eq(~sc.busy)
                    with m.If(~sc.busy & ~co.busy & drained):
                        for s in range(2):
                            with m.If(on(slot, s)):
                                m.d.sync += states[s].eq(2)
                        m.next = "IDLE"

        scan_control("lsb", sc_l, co_l, l_slot, l_st, ~rl.busy)

        # ---------------------------------------------------------------- V reader
        # two sources of runs: the running job's missing rows (on demand) and a job's prefetch;
        # a FIFO of the runs in the reader says whose run is being written (bank, source)
        m.submodules.co_v = co_v = Coalescer(token_bits=TB, capacity=N)
        m.submodules.v_tags = v_tags = SyncFIFO(width=2, depth=8)
        od_runs = Signal(range(9))        # on-demand runs in the reader
        pf_runs = Signal(range(9))        # prefetch runs in the reader
        lock, lsel = Signal(), Signal()
        sel = Signal()                    # 1: the prefetch coalescer's run
        m.d.comb += sel.eq(Mux(lock, lsel, ~co_v.o.valid))
        cv = Mux(sel, co_p.o.valid, co_v.o.valid)
        m.d.comb += [rv.cmd.valid.eq(cv & v_tags.w_rdy),
                     rv.cmd.payload.eq(Mux(sel, co_p.o.payload, co_v.o.payload)),
                     co_v.o.ready.eq(~sel & rv.cmd.ready & v_tags.w_rdy),
                     co_p.o.ready.eq(sel & rv.cmd.ready & v_tags.w_rdy),
                     rv.base.eq(Mux(sel, pj.v_base, bj.v_base)),
                     rv.d_log2.eq(Mux(sel, pj.d_log2, bj.d_log2)),
                     v_tags.w_data.eq(Cat(sel, Mux(sel, hi_of(p_slot), hi_of(bs))))]
        m.d.sync += [lock.eq(rv.cmd.valid & ~rv.cmd.ready), lsel.eq(sel)]
        v_take = Signal()
        m.d.comb += [v_take.eq(rv.cmd.valid & rv.cmd.ready), v_tags.w_en.eq(v_take),
                     v_tags.r_en.eq(rv.done)]
        m.d.sync += [od_runs.eq(od_runs + (v_take & ~sel) - (rv.done & ~v_tags.r_data[0])),
                     pf_runs.eq(pf_runs + (v_take & sel) - (rv.done & v_tags.r_data[0]))]
        wiring.connect(m, rv.wr, att.v_wr)
        m.d.comb += att.v_wr.payload.addr.eq(word(rv.wr.payload.addr, v_tags.r_data[1]))

        scan_control("vpf", sc_p, co_p, p_slot, p_st, pf_runs == 0)

        # ---------------------------------------------------------------- kept -> V rows
        ir_v = index.read_port()
        kb = att.kept.payload
        pb_b = base_of(bs)
        v_lane = Signal(range(S + 1))
        v_rd_v = Signal()
        v_rd_pos = Signal(range(N))
        v_end = Signal()                  # the query's kept beats are all taken
        lane_idx = Signal(range(N))
        m.d.comb += lane_idx.eq(Array(kb.data[j] for j in range(S))[v_lane])
        lane_in = Signal()
        m.d.comb += lane_in.eq(v_lane < kb.count)
        missing = Signal()
        m.d.comb += missing.eq(lane_in & ~resident.bit_select(pb_b + lane_idx, 1))
        all_res = Signal()                # every lane of the beat resident: one cycle
        m.d.comb += all_res.eq(_all([(kb.count <= j) | resident.bit_select(pb_b + kb.data[j], 1)
                                     for j in range(S)]))
        v_hold = Signal()
        m.d.comb += [v_hold.eq(v_rd_v & ~co_v.i.ready),
                     ir_v.addr.eq(pb_b + Mux(v_hold, v_rd_pos, lane_idx)), ir_v.en.eq(1),
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
                                 resident.bit_select(pb_b + lane_idx, 1).eq(1)]
                m.d.sync += v_lane.eq(v_lane + 1)
        # the query's last missing row closes its run; its rows in (and the job's prefetch
        # done), the query may go on
        m.d.comb += co_v.flush.eq(v_end & ~v_rd_v)
        with m.If(v_end & ~v_rd_v & ~co_v.busy & (od_runs == 0) & (pick(p_st, bs) != 1)):
            m.d.comb += att.v_done.eq(1)
            m.d.sync += v_end.eq(0)

        # ---------------------------------------------------------------- queries -> Q rows
        # a ring of Q_SLOTS rows: a query's row is fetched into the next free slot as soon as
        # its job's descriptor is in; slots leave in order, to the pipeline (or dropped, for a
        # job that went bad)
        QS = Q_SLOTS
        m.submodules.qmem = qmem = Memory(shape=data.ArrayLayout(signed(W), M), depth=QS,
                                          init=[])
        qw = qmem.write_port(granularity=8)
        qr = qmem.read_port(domain="comb")
        e_full = Signal(QS)
        e_last = Signal(QS)
        e_slot = Signal(QS)
        a_ptr = Signal(range(QS))         # next slot to fill
        d_ptr = Signal(range(QS))         # next slot to complete (runs complete in order)
        o_ptr = Signal(range(QS))         # next slot to leave
        occ = Signal(range(QS + 1))
        q_cmd_v = Signal()
        q_cmd = Signal(run_layout(TB, N))
        q_cmd_base = Signal(AW)
        q_cmd_dl = Signal.like(rq.d_log2)
        m.d.comb += [rq.cmd.valid.eq(q_cmd_v), rq.cmd.payload.eq(q_cmd),
                     rq.base.eq(q_cmd_base), rq.d_log2.eq(q_cmd_dl), rq.wr.ready.eq(1),
                     qw.addr.eq(rq.wr.payload.addr), qw.data.eq(rq.wr.payload.data)]
        with m.If(rq.wr.valid):
            m.d.comb += qw.en.eq(rq.wr.payload.en)
        with m.If(rq.cmd.valid & rq.cmd.ready):
            m.d.sync += q_cmd_v.eq(0)
        with m.If(rq.done):
            m.d.sync += [e_full.bit_select(d_ptr, 1).eq(1),
                         d_ptr.eq(Mux(d_ptr == QS - 1, 0, d_ptr + 1))]
        qj = pick(regs, qs_)
        qst = pick(st, qs_)
        qc = self.queries.payload
        alloc = Signal()
        leave = Signal()
        with m.If((qst != FREE) & ~pick(q_all, qs_)):
            with m.If(pick(refused, qs_)):
                m.d.comb += self.queries.ready.eq(1)          # a refused job's queries
            with m.Else():
                m.d.comb += self.queries.ready.eq(~q_cmd_v & (occ < QS))
                m.d.comb += alloc.eq(self.queries.valid & self.queries.ready)
        with m.If(self.queries.valid & self.queries.ready & qc.last):
            for s in range(2):
                with m.If(on(qs_, s)):
                    m.d.sync += q_all[s].eq(1)
            m.d.sync += qs_.eq(~qs_)
        head_ok = Signal()
        m.d.comb += head_ok.eq(qc.head < G)
        q_dst = Signal.like(q_cmd.dst)
        # position slot * M / d puts the row at lanes 0 .. d-1 of word `slot`
        with m.Switch(qj.d_log2):
            for k in range(3, LM + 1):
                with m.Case(k):
                    m.d.comb += q_dst.eq(a_ptr << (LM - k))
        with m.If(alloc):
            m.d.sync += [q_cmd_v.eq(1), q_cmd.start.eq(qc.row), q_cmd.count.eq(1),
                         q_cmd.dst.eq(q_dst), q_cmd_dl.eq(qj.d_log2),
                         q_cmd_base.eq(Mux(head_ok,
                                           Array(qj.q_base[h] for h in range(G))[qc.head],
                                           qj.q_base[0])),
                         e_last.bit_select(a_ptr, 1).eq(qc.last),
                         e_slot.bit_select(a_ptr, 1).eq(qs_),
                         a_ptr.eq(Mux(a_ptr == QS - 1, 0, a_ptr + 1))]
            with m.If(~head_ok):           # runs as head 0, flagged
                for s in range(2):
                    with m.If(on(qs_, s)):
                        m.d.sync += [err[s].eq(1), code[s].eq(CoreError.BAD_HEAD)]
        with m.If(leave):
            m.d.sync += [e_full.bit_select(o_ptr, 1).eq(0),
                         o_ptr.eq(Mux(o_ptr == QS - 1, 0, o_ptr + 1))]
        m.d.sync += occ.eq(occ + alloc - leave)
        head_full = Signal()
        head_slot = Signal()
        m.d.comb += [head_full.eq(e_full.bit_select(o_ptr, 1)),
                     head_slot.eq(e_slot.bit_select(o_ptr, 1)), qr.addr.eq(o_ptr)]
        for e in range(M):
            m.d.comb += att.q.payload.data[e].eq(qr.data[e])
        m.d.comb += att.q.payload.last.eq(e_last.bit_select(o_ptr, 1))

        # ---------------------------------------------------------------- the running job
        # the pipeline's run registers: the running job's
        for name in run_registers(att_cfg):
            m.d.comb += getattr(att, name).eq(getattr(bj, name))
        # V rows are waited for per query unless the job's prefetch has brought them all in
        # before its run starts (then prob x V streams the pairs as they come, no gating)
        m.d.comb += [att.n.eq(bj.n), att.bank.eq(hi_of(bs)),
                     att.v_wait.eq(pick(p_st, bs) != 2),
                     att.lsb_ready.eq(pick(l_st, bs) == 2)]
        with m.If(att.lsb_needed & (pick(l_st, bs) == 0)):
            for s in range(2):
                with m.If(on(bs, s)):
                    m.d.sync += l_st[s].eq(1)

        jobs_done = Signal(32)
        error = Signal()
        ecode = Signal(CoreError)
        refetched = Signal(32)
        busy_cycles = Signal(32)
        m.d.comb += [self.jobs_done.eq(jobs_done), self.error.eq(error),
                     self.error_code.eq(ecode), self.attention_error.eq(att.error_code),
                     self.refetched.eq(refetched), self.busy_cycles.eq(busy_cycles)]
        busy = Signal()
        m.d.comb += [busy.eq((st[0] != FREE) | (st[1] != FREE)), self.busy.eq(busy)]
        with m.If(busy):
            m.d.sync += busy_cycles.eq(busy_cycles + 1)
        with m.If(self.row.valid & self.row.ready & self.row.payload.refetch):
            m.d.sync += refetched.eq(refetched + 1)
        with m.If(dram_err):
            for s in range(2):
                with m.If(on(bs, s) & (st[s] == RUN)):
                    m.d.sync += [err[s].eq(1), code[s].eq(CoreError.DRAM)]

        waits = {name: Signal(32, name=f"w_{name}") for name in ("k", "q", "lsb", "v")}
        for name, w in waits.items():
            m.d.comb += getattr(self, f"wait_{name}").eq(w)

        o = self.o
        bst = pick(st, bs)
        scans_idle = Signal()             # no scan of the running job's slot is pending
        m.d.comb += scans_idle.eq((pick(l_st, bs) != 1) & (pick(p_st, bs) != 1))
        with m.FSM(name="back"):
            with m.State("IDLE"):
                with m.If(bst == READY):
                    for s in range(2):
                        with m.If(on(bs, s)):
                            m.d.sync += st[s].eq(RUN)
                    m.next = "RUN"
                with m.Elif(bst == BAD):
                    # Q rows fetched for it are dropped; then its error beat
                    m.d.comb += leave.eq(head_full & (head_slot == bs))
                    with m.If(pick(q_all, bs) & scans_idle & ~q_cmd_v
                              & ((occ == 0) | (head_slot != bs))):
                        m.next = "ERROR"
                with m.Elif(bst == INTAKE):
                    m.d.sync += waits["k"].eq(waits["k"] + 1)
            with m.State("RUN"):
                m.d.comb += [att.q.valid.eq(head_full & (head_slot == bs)),
                             leave.eq(att.q.valid & att.q.ready)]
                with m.If(att.q.ready & ~att.q.valid & ~(pick(q_all, bs) & (
                        (occ == 0) | (head_slot != bs)))):
                    m.d.sync += waits["q"].eq(waits["q"] + 1)
                with m.If(att.lsb_needed):
                    m.d.sync += waits["lsb"].eq(waits["lsb"] + 1)
                with m.If(att.v_stall):
                    m.d.sync += waits["v"].eq(waits["v"] + 1)
                wiring.connect(m, att.o, wiring.flipped(o))
                with m.If(o.valid & o.ready & o.payload.last):
                    m.d.sync += [jobs_done.eq(jobs_done + 1),
                                 error.eq(pick(err, bs) | o.payload.error),
                                 ecode.eq(Mux(o.payload.error, CoreError.ATTENTION,
                                              pick(code, bs)))]
                    m.next = "FREE"
            with m.State("ERROR"):
                m.d.comb += [o.valid.eq(1), o.payload.error.eq(1), o.payload.last.eq(1)]
                with m.If(o.ready):
                    m.d.sync += [jobs_done.eq(jobs_done + 1), error.eq(1),
                                 ecode.eq(pick(code, bs))]
                    m.next = "FREE"
            with m.State("FREE"):
                # the slot and its banks are free once no scan of it is running
                with m.If(scans_idle):
                    for s in range(2):
                        with m.If(on(bs, s)):
                            m.d.sync += [st[s].eq(FREE), use[s].eq(0)]
                    m.d.sync += bs.eq(~bs)
                    m.next = "IDLE"
        back_waits = Signal()             # the back end has nothing to run yet
        m.d.comb += back_waits.eq(bst == INTAKE)
        m.d.comb += arb.urgent.eq(Cat(
            back_waits & (fs == bs),                                          # K MSB
            (l_slot == bs) & (pick(l_st, bs) == 1),                           # K LSB
            (bst == RUN) & ((od_runs != 0) | co_v.busy | v_rd_v | v_end
                            | (pick(p_st, bs) == 1)),                         # V
            1))                                                               # Q
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
