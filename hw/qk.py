"""The Q.K dot-product array: M multipliers and a registered adder tree, fully pipelined.

Shared layouts (also used by the query pipeline, the testbenches and the softmax input):

- `q_layout(cfg)`: ``ArrayLayout(signed(W), M)``, one query row (elements >= d are ignored).
- `k_word_layout(cfg)`: ``ArrayLayout(signed(W), M)``, one word of the K buffer; word w holds keys
  w*g .. w*g+g-1, key (w*g + i) in elements [i*d, (i+1)*d) (g = M/d).
- `dots_layout(cfg)`: the row-stream beat ``{data: ArrayLayout(signed(dot_width), S),
  count: range(S+1), last: 1}`` (`hw.zero_elim.compact_layout`).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from .dsp import Multiplier
from .zero_elim import compact_layout

__all__ = ["QKArray", "q_layout", "k_word_layout", "dots_layout", "k_depth",
           "qk_latency"]

MIN_D_LOG2 = 3


def _log2(x: int) -> int:
    return x.bit_length() - 1


def q_layout(cfg: AttentionConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(cfg.data_width), cfg.qk_mults)


def k_word_layout(cfg: AttentionConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(cfg.data_width), cfg.qk_mults)


def dots_layout(cfg: AttentionConfig) -> data.StructLayout:
    return compact_layout(signed(cfg.dot_width), cfg.softmax_lanes)


def k_depth(cfg: AttentionConfig) -> int:
    """Words of the K buffer: capacity (capacity keys of the largest d = M; at d < M the same
    keys use capacity * d / M words)."""
    return cfg.capacity


def qk_latency(cfg: AttentionConfig) -> int:
    """Cycles from a query's ``q`` transfer to its first ``o`` beat (nothing in flight, ``o``
    ready): log2(M) + 9."""
    return _log2(cfg.qk_mults) + 9


class QKArray(wiring.Component):
    """Dots of one query against n keys: ``o`` = K[:n, :d] @ q[:d], S dots a beat, key order.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)
        W = data_width, M = qk_mults, S = softmax_lanes, N = capacity, dot_width.

    Ports
    -----
    q : In(stream.Signature(ArrayLayout(signed(W), M)))
        One beat per query; elements >= d are ignored.
    d_log2 : In(range(log2(M) + 1))
        log2 of the head dimension d, sampled with each ``q`` beat (clamped to 3..log2 M).
    n : In(range(N + 1))
        Keys of the query, sampled with each ``q`` beat (1..N; 0 counts as 1, above N as N).
    k_rd : In(ReadPort.Signature(addr_width=ceil(log2(N*8/M)), shape=ArrayLayout(signed(W), M)))
        Synchronous read port of the K buffer (data the cycle after ``en``/``addr``). ``en`` is
        high exactly in the cycles that read a word; words 0..ceil(n/g)-1 are read in order.
    o : Out(stream.Signature({data: ArrayLayout(signed(dot_width), S), count: range(S+1),
                              last: 1}))
        Exactly n dots per query in key order: full beats, the query's last beat has ``last``=1
        and count 1..S; lanes >= count are 0.
    busy : Out(1)
        A query is in flight (accepted and not all of its beats transferred on ``o``).
    macs : Out(32)
        Useful multiply-accumulates done since reset (n x d per query), wrapping.

    Throughput and latency (g = M/d keys per K word): one K word per cycle when g <= S (the
    multipliers are always busy; a query takes ceil(n/g) cycles); when g > S the output (S dots
    a beat) is the limit: one word every g/S cycles, a query takes ceil(n/S) cycles. In both
    cases a query occupies ceil(n / min(g, S)) issue cycles and queries follow each other with
    no bubble while ``q`` offers the next one. ``q`` is ready while the array is idle and in the
    cycle that reads the last K word of the current query (so q.ready depends on no input).
    A beat leaves log2(M) + 8 cycles after the K read that completes it (`read_latency`), so
    a query's first beat leaves log2(M) + 9 cycles after its ``q`` transfer (`qk_latency`) when
    g >= S or n <= g, and ceil(min(n, S)/g) - 1 cycles later otherwise (its first beat then
    needs that many more words). For back-to-back queries with ``o`` always ready, the cycles
    from the first ``q`` transfer to the last ``o`` transfer are
    sum(ceil(n_i / min(g_i, S))) + log2(M) + 8 (`spatten.golden.qk_cycles.qk_cycle_model`).
    The K buffer holds N*8 elements: n must not exceed N*8/d (more wraps the word address).

    Backpressure: a word that starts beats is read only when the output FIFO (depth
    `fifo_depth` = log2(M) + 8 + max(1, M/8/S)) has room for `max_word_beats` more entries, so
    the pipeline behind the read never stalls and nothing is lost; with ``o`` always ready this
    room never runs out.

    Pipeline (from a read in cycle t; a number is the clock edge that registers the stage):
    t+1 the K word and the query's q in fabric registers, t+2 multiplier input registers, t+3
    products (`hw.dsp.Multiplier`: a MULT18X18D with its registers on ECP5), then one register per
    adder-tree level (t+3+k for level k, L = log2 M levels); the sums of level log2(d) are
    delayed to the depth of level L, gathered (t+L+4), packed into an S-lane beat (t+L+5),
    written to a `SyncFIFOBuffered` (t+L+6) and offered on ``o`` from t+L+8.
    """

    def __init__(self, *, config):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be a spatten.config.AttentionConfig, not {config!r}")
        cfg = config
        self.config = cfg
        self._M = cfg.qk_mults
        self._L = _log2(cfg.qk_mults)
        self._S = cfg.softmax_lanes
        self._G = cfg.qk_mults >> MIN_D_LOG2       # largest g (d = 8)
        self._N = cfg.capacity
        self.depth = k_depth(cfg)
        self.addr_width = (self.depth - 1).bit_length()
        #: cycles from a K read to its first beat on ``o``
        self.read_latency = self._L + 8
        #: largest number of beats one word produces
        self.max_word_beats = max(1, self._G // self._S)
        #: output FIFO entries: enough for the beats of `read_latency` cycles plus one word
        self.fifo_depth = self.read_latency + self.max_word_beats
        self.latency = qk_latency(cfg)
        super().__init__({
            "q": In(stream.Signature(q_layout(cfg))),
            "d_log2": In(range(self._L + 1)),
            "n": In(range(cfg.capacity + 1)),
            "k_rd": In(ReadPort.Signature(addr_width=self.addr_width, shape=k_word_layout(cfg))),
            "o": Out(stream.Signature(dots_layout(cfg))),
            "busy": Out(1),
            "macs": Out(32),
        })

    def _meta_layout(self):
        return data.StructLayout({
            "valid": 1,
            "l": range(self._L + 1),            # log2(d)
            "nvalid": range(self._G + 1),       # keys of this word that belong to the query
            "last": 1,                          # last word of the query
            "pos": range(max(2, self._S)),      # word index within its beat (g <= S)
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        W, M, L, S, G, N = cfg.data_width, self._M, self._L, self._S, self._G, self._N
        dw = cfg.dot_width
        log_s = _log2(S)
        depth_fifo = self.fifo_depth
        meta_layout = self._meta_layout()
        levels = range(MIN_D_LOG2, L + 1)

        def g_of(lv):
            return 1 << (L - lv)

        # ------------------------------------------------------------------ issue (read) stage
        # The word to read next is described by registers (keys it holds, last of its query,
        # FIFO entries it reserves), computed one cycle ahead, so that the read decision is a
        # few gates deep: active, no pacing wait, and room in the FIFO for its beats.
        active = Signal()
        q_iss = Signal(q_layout(cfg))            # q replicated: q_iss[j] = q[j mod d]
        l_iss = Signal(range(L + 1), init=L)
        addr = Signal(self.addr_width)
        cur_nv = Signal(range(G + 1))            # keys of the word that belong to the query
        cur_last = Signal()                      # last word of the query
        cur_need = Signal(range(self.max_word_beats + 1))   # FIFO entries the word reserves
        cur_pos = Signal(range(max(2, S)))       # its index within its beat (g <= S)
        rest = Signal(range(N + 1))              # keys of the query after this word
        wait = Signal(range(self.max_word_beats))   # cycles before the next read (g > S)
        used = Signal(range(depth_fifo + 1))     # FIFO entries reserved (in flight or queued)
        room = Signal(init=1)                    # used <= fifo_depth - max_word_beats

        def describe(keys, lsel, pos_of):
            """The descriptor of the word holding the first of `keys` keys at d = 2**lsel
            (values of lsel below 3 count as 3, above L as L): its keys, whether it is the last,
            the FIFO entries it reserves, its index within its beat (pos_of(lv), g <= S) and the
            keys after it."""
            nv = Signal(range(G + 1))
            last = Signal()
            need = Signal.like(cur_need)
            pos_new = Signal.like(cur_pos)
            after = Signal.like(rest)
            top = (1 << len(lsel)) - 1
            with m.Switch(lsel):
                for lv in levels:
                    g = g_of(lv)
                    lo = 0 if lv == MIN_D_LOG2 else lv
                    hi = top if lv == L else lv
                    with m.Case(*range(lo, hi + 1)):
                        # every term from `keys` in parallel (keys = 0 counts as 1, > N as N)
                        fits = keys <= g
                        one = keys | (keys == 0)
                        m.d.comb += [last.eq(fits), nv.eq(Mux(fits, one, g)),
                                     after.eq(Mux(fits, 0, Mux(keys > N, N - g, keys - g)))]
                        if g <= S:
                            m.d.comb += [pos_new.eq(pos_of(lv)), need.eq(pos_new == 0)]
                        else:
                            m.d.comb += need.eq(Mux(fits, (one + S - 1) >> log_s, g // S))
            return nv, last, need, pos_new, after

        issue = Signal()
        m.d.comb += issue.eq(active & (wait == 0) & (room | (cur_need == 0)))
        m.d.comb += [
            self.k_rd.en.eq(issue),
            self.k_rd.addr.eq(addr),
            self.q.ready.eq(~active | (issue & cur_last)),
        ]

        # the word read in this cycle travels down the pipeline with its descriptor
        meta0 = Signal(meta_layout)
        q_s0 = Signal(q_layout(cfg), reset_less=True)
        m.d.sync += [
            meta0.valid.eq(issue), meta0.l.eq(l_iss), meta0.nvalid.eq(cur_nv),
            meta0.last.eq(cur_last), meta0.pos.eq(cur_pos),
            q_s0.eq(q_iss),
        ]

        with m.If(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        nxt = describe(rest, l_iss,
                       lambda lv: Mux(cur_pos == S // g_of(lv) - 1, 0, cur_pos + 1))
        with m.If(issue):
            m.d.sync += [
                addr.eq(addr + 1),
                cur_nv.eq(nxt[0]), cur_last.eq(nxt[1]), cur_need.eq(nxt[2]), cur_pos.eq(nxt[3]),
                rest.eq(nxt[4]),
            ]
            if self.max_word_beats > 1:
                # a word that completes b beats holds the read stage for b cycles (g > S)
                m.d.sync += wait.eq(Mux(l_iss < L - log_s, cur_need - 1, 0))
            with m.If(cur_last):
                m.d.sync += active.eq(0)

        o_take = self.o.valid & self.o.ready
        add = Signal.like(cur_need)
        m.d.comb += add.eq(Mux(issue, cur_need, 0))
        m.d.sync += used.eq(used + add - o_take)
        # room = (used + add - o_take <= limit), as comparisons of `used` with constants
        limit = depth_fifo - self.max_word_beats
        with m.Switch(add):
            for k in range(self.max_word_beats + 1):
                with m.Case(k):
                    m.d.sync += room.eq(Mux(o_take, used <= limit - k + 1, used <= limit - k))

        # a new query: sample q (replicated by d), d_log2, n
        l_in = Signal.like(l_iss)
        m.d.comb += l_in.eq(Mux(self.d_log2 < MIN_D_LOG2, MIN_D_LOG2,
                                Mux(self.d_log2 > L, L, self.d_log2)))
        first = describe(self.n, self.d_log2, lambda lv: 0)
        with m.If(self.q.valid & self.q.ready):
            m.d.sync += [
                active.eq(1), l_iss.eq(l_in), addr.eq(0),
                cur_nv.eq(first[0]), cur_last.eq(first[1]), cur_need.eq(first[2]),
                cur_pos.eq(0), rest.eq(first[4]),
            ]
            top = (1 << len(self.d_log2)) - 1
            with m.Switch(self.d_log2):
                for lv in levels:
                    lo = 0 if lv == MIN_D_LOG2 else lv
                    with m.Case(*range(lo, (top if lv == L else lv) + 1)):
                        d = 1 << lv
                        m.d.sync += [q_iss[j].eq(self.q.payload[j % d]) for j in range(M)]

        # ------------------------------------------------------------------ datapath
        metas = [meta0]

        def next_meta(name):
            nm = Signal(meta_layout, name=name)
            m.d.sync += nm.eq(metas[-1])
            metas.append(nm)
            return nm

        # t+1: the K word and its q registered in the fabric (a block-RAM read is slow)
        kreg = Signal(k_word_layout(cfg), reset_less=True)
        qm = Signal(q_layout(cfg), reset_less=True)
        m.d.sync += [kreg.eq(self.k_rd.data), qm.eq(q_s0)]
        next_meta("meta_kreg")
        # t+2, t+3: multiplier input and output registers (inside the DSP blocks on ECP5)
        prods = []
        for j in range(M):
            mul = m.submodules[f"mul{j}"] = Multiplier(a_shape=signed(W), b_shape=signed(W))
            m.d.comb += [mul.a.eq(kreg[j]), mul.b.eq(qm[j])]
            prods.append(mul.p)
        next_meta("meta_mul_in")
        next_meta("meta_prod")
        # one register per tree level
        tree = [prods]
        for k in range(1, L + 1):
            prev = tree[-1]
            lvl = [Signal(signed(2 * W + k), name=f"sum{k}_{i}", reset_less=True)
                   for i in range(M >> k)]
            m.d.sync += [s.eq(prev[2 * i] + prev[2 * i + 1]) for i, s in enumerate(lvl)]
            tree.append(lvl)
            next_meta(f"meta_level{k}")
        # the sums of level l (the dots when d = 2**l) delayed to the depth of level L
        taps = {}
        for lv in levels:
            vals = tree[lv]
            for stage in range(L - lv):
                dl = [Signal.like(v, name=f"tap{lv}_{stage}_{i}", reset_less=True)
                      for i, v in enumerate(vals)]
                m.d.sync += [a.eq(b) for a, b in zip(dl, vals, strict=True)]
                vals = dl
            taps[lv] = vals
        tm = metas[-1]

        # gather: R holds the dots of one word (g <= G of them); when g > S it is shifted by S
        # every cycle while the word's beats go out
        R = Signal(data.ArrayLayout(signed(dw), G), reset_less=True)
        rv = Signal()
        rl = Signal(range(L + 1))
        rnv = Signal(range(G + 1))
        rlast = Signal()
        rpos = Signal(range(max(2, S)))
        macs = Signal(32)
        m.d.comb += self.macs.eq(macs)
        big_levels = [lv for lv in levels if g_of(lv) > S]
        r_big = Signal()
        if big_levels:
            m.d.comb += r_big.eq(rl < max(big_levels) + 1)
        with m.If(tm.valid):
            m.d.sync += [rv.eq(1), rl.eq(tm.l), rnv.eq(tm.nvalid), rlast.eq(tm.last),
                         rpos.eq(tm.pos), macs.eq(macs + (tm.nvalid << tm.l))]
            with m.Switch(tm.l):
                for lv in levels:
                    with m.Case(lv):
                        m.d.sync += [R[i].eq(v) for i, v in enumerate(taps[lv])]
        with m.Elif(rv & r_big & (rnv > S)):
            m.d.sync += [rnv.eq(rnv - S)]
            m.d.sync += [R[i].eq(R[i + S]) for i in range(G - S)]
        with m.Else():
            m.d.sync += rv.eq(0)

        # pack: the registered S-lane beat
        beat = Signal(dots_layout(cfg))
        beat_valid = Signal()
        m.d.sync += beat_valid.eq(0)
        with m.If(rv):
            with m.Switch(rl):
                for lv in levels:
                    g = g_of(lv)
                    with m.Case(lv):
                        if g > S:
                            m.d.sync += [beat.data[s].eq(Mux(s < rnv, R[s], 0))
                                         for s in range(S)]
                            m.d.sync += [
                                beat.count.eq(Mux(rnv >= S, S, rnv)),
                                beat.last.eq(rlast & (rnv <= S)),
                                beat_valid.eq(1),
                            ]
                        else:
                            for s in range(S):
                                e = s % g
                                with m.If(rpos == s // g):
                                    m.d.sync += beat.data[s].eq(Mux(e < rnv, R[e], 0))
                                with m.Elif(rpos == 0):
                                    m.d.sync += beat.data[s].eq(0)
                            m.d.sync += [
                                beat.count.eq((rpos << (L - lv)) + rnv),
                                beat.last.eq(rlast),
                                beat_valid.eq((rpos == S // g - 1) | rlast),
                            ]

        # ------------------------------------------------------------------ output FIFO
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=len(beat.as_value()), depth=depth_fifo)
        m.d.comb += [
            fifo.w_en.eq(beat_valid),
            fifo.w_data.eq(beat.as_value()),
            self.o.valid.eq(fifo.r_rdy),
            self.o.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.o.ready),
            self.busy.eq(active | (used != 0)),
        ]
        return m
