"""The Q.K dot-product array: M multipliers and a registered adder tree, fully pipelined.

Four parts, in pipeline order: `QKIssue` (the read stage: which K word to read next, and whether
the output has room for its beats), the multipliers (`hw.common.dsp.Multiplier`, one per element of
a K word), the registered `hw.common.adder_tree.AdderTree` (the dots at every head dimension),
`DotPacker` (a word's dots into S-lane beats); then the output FIFO.

Shared layouts (also used by the query pipeline, the testbenches and the softmax input):

- `q_layout(cfg)`: ``ArrayLayout(signed(W), M)``, one query row (elements >= d are ignored).
- `k_word_layout(cfg)`: ``ArrayLayout(signed(W), M)``, one word of the K buffer; word w holds keys
  w*g .. w*g+g-1, key (w*g + i) in elements [i*d, (i+1)*d) (g = M/d).
- `dots_layout(cfg)`: the row-stream beat ``{data: ArrayLayout(signed(dot_width), S),
  count: range(S+1), last: 1}`` (`hw.common.zero_elim.compact_layout`).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from ..common.adder_tree import AdderTree, level_sums_layout
from ..common.dsp import Multiplier, MultiplierRegisters
from ..common.zero_elim import compact_layout

__all__ = ["QKArray", "QKIssue", "DotPacker", "q_layout", "k_word_layout", "dots_layout",
           "word_layout", "k_depth", "qk_latency", "max_word_beats", "output_fifo_depth",
           "K_READ_STAGES", "MULTIPLIER_REGISTERS", "PACK_LATENCY", "FIFO_LATENCY"]

MIN_D_LOG2 = 3
#: cycles from a K read to the word in the fabric register before the multipliers: the block
#: RAM's read, then that register (a block-RAM read is slow)
K_READ_STAGES = 2
#: the registers of the array's multipliers (their input and product registers)
MULTIPLIER_REGISTERS = MultiplierRegisters.INPUT_OUTPUT
#: cycles of `DotPacker`: gather, pack
PACK_LATENCY = 2
#: cycles from a beat written into the output FIFO (`SyncFIFOBuffered`) to the beat offered
FIFO_LATENCY = 2


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
    ready): the config's `qk_latency`, log2(M) + 9."""
    return cfg.qk_latency


def word_layout(cfg: AttentionConfig) -> data.StructLayout:
    """What travels down the pipeline with a K word: whether a word was read (``valid``), the
    query's log2(d) (``l``), how many of its keys belong to the query (``nvalid``), whether it
    is the query's last (``last``) and its index within its beat when g <= S (``pos``)."""
    L, S = _log2(cfg.qk_mults), cfg.softmax_lanes
    return data.StructLayout({
        "valid": 1,
        "l": range(L + 1),
        "nvalid": range((cfg.qk_mults >> MIN_D_LOG2) + 1),
        "last": 1,
        "pos": range(max(2, S)),
    })


def max_word_beats(cfg: AttentionConfig) -> int:
    """The most output beats one K word produces: max(1, M/8/S) (at d = 8)."""
    return max(1, (cfg.qk_mults >> MIN_D_LOG2) // cfg.softmax_lanes)


def output_fifo_depth(cfg: AttentionConfig) -> int:
    """Entries of the output FIFO: the beats of `qk_read_latency` cycles plus one word's."""
    return cfg.qk_read_latency + max_word_beats(cfg)


def _check_config(config) -> AttentionConfig:
    if not isinstance(config, AttentionConfig):
        raise TypeError(f"config must be a spatten.config.AttentionConfig, not {config!r}")
    return config


def _head_dim_cases(value, lo: int, hi: int) -> list:
    """(level, the values of `value` that select it) for each log2(d) in lo..hi: every value of
    its width, those below lo counting as lo and those above hi as hi."""
    top = (1 << len(value)) - 1
    return [(lv, range(0 if lv == lo else lv, (top if lv == hi else lv) + 1))
            for lv in range(lo, hi + 1)]


class QKIssue(wiring.Component):
    """The Q.K array's read stage: takes a query and reads the K words of its n keys in order.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)

    Ports
    -----
    q : In(stream.Signature(q_layout(cfg)))
        A query; ``q.ready`` is high while idle and in the cycle that reads the current query's
        last word (it depends on no input).
    d_log2, n : In
        As `QKArray`'s, sampled with each ``q`` transfer.
    k_rd_en, k_rd_addr : Out
        The K buffer read: ``k_rd_en`` is high exactly in the cycles that read a word,
        ``k_rd_addr`` the word (0, 1, .. for each query).
    word : Out(`word_layout`(cfg))
        The descriptor of the word read in the previous cycle (``valid`` = 0 if none): aligned
        with the buffer's read data.
    word_q : Out(q_layout(cfg))
        That word's query, element j holding q[j mod d].
    beat_taken : In(1)
        An output beat left the output FIFO (of `output_fifo_depth` entries).
    busy : Out(1)
        A query is being read or some of its beats have not been taken.

    Pacing (g = M/d keys a word): a word a cycle while g <= S; when g > S a word that completes
    b = g/S beats holds the stage for b cycles. A word is read only when the FIFO has room for
    the beats it completes (reserved at the read, freed by ``beat_taken``). The next word's
    descriptor is computed a cycle ahead, so the read decision is a few gates deep.
    """

    def __init__(self, *, config):
        cfg = self.config = _check_config(config)
        self.addr_width = (k_depth(cfg) - 1).bit_length()
        super().__init__({
            "q": In(stream.Signature(q_layout(cfg))),
            "d_log2": In(range(_log2(cfg.qk_mults) + 1)),
            "n": In(range(cfg.capacity + 1)),
            "k_rd_en": Out(1),
            "k_rd_addr": Out(self.addr_width),
            "word": Out(word_layout(cfg)),
            "word_q": Out(q_layout(cfg)),
            "beat_taken": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        M, L, S, N = cfg.qk_mults, _log2(cfg.qk_mults), cfg.softmax_lanes, cfg.capacity
        G = M >> MIN_D_LOG2
        log_s = _log2(S)
        beats_max = max_word_beats(cfg)
        depth_fifo = output_fifo_depth(cfg)

        def g_of(lv):
            return 1 << (L - lv)

        # the word to read next, described by registers computed one cycle ahead
        active = Signal()
        q_iss = Signal(q_layout(cfg))            # q replicated: q_iss[j] = q[j mod d]
        l_iss = Signal(range(L + 1), init=L)
        addr = Signal(self.addr_width)
        cur_nv = Signal(range(G + 1))            # keys of the word that belong to the query
        cur_last = Signal()                      # last word of the query
        cur_need = Signal(range(beats_max + 1))  # FIFO entries the word reserves
        cur_pos = Signal(range(max(2, S)))       # its index within its beat (g <= S)
        rest = Signal(range(N + 1))              # keys of the query after this word
        wait = Signal(range(beats_max))          # cycles before the next read (g > S)
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
            with m.Switch(lsel):
                for lv, values in _head_dim_cases(lsel, MIN_D_LOG2, L):
                    g = g_of(lv)
                    with m.Case(*values):
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
            self.k_rd_en.eq(issue),
            self.k_rd_addr.eq(addr),
            self.q.ready.eq(~active | (issue & cur_last)),
            self.busy.eq(active | (used != 0)),
        ]

        # the word read in this cycle travels down the pipeline with its descriptor
        word = self.word
        q_s0 = Signal(q_layout(cfg), reset_less=True)
        m.d.sync += [
            word.valid.eq(issue), word.l.eq(l_iss), word.nvalid.eq(cur_nv),
            word.last.eq(cur_last), word.pos.eq(cur_pos),
            q_s0.eq(q_iss),
        ]
        m.d.comb += self.word_q.eq(q_s0)

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
            if beats_max > 1:
                # a word that completes b beats holds the read stage for b cycles (g > S)
                m.d.sync += wait.eq(Mux(l_iss < L - log_s, cur_need - 1, 0))
            with m.If(cur_last):
                m.d.sync += active.eq(0)

        add = Signal.like(cur_need)
        m.d.comb += add.eq(Mux(issue, cur_need, 0))
        m.d.sync += used.eq(used + add - self.beat_taken)
        # room = (used + add - taken <= limit), as comparisons of `used` with constants
        limit = depth_fifo - beats_max
        with m.Switch(add):
            for k in range(beats_max + 1):
                with m.Case(k):
                    m.d.sync += room.eq(Mux(self.beat_taken, used <= limit - k + 1,
                                            used <= limit - k))

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
            with m.Switch(self.d_log2):
                for lv, values in _head_dim_cases(self.d_log2, MIN_D_LOG2, L):
                    with m.Case(*values):
                        d = 1 << lv
                        m.d.sync += [q_iss[j].eq(self.q.payload[j % d]) for j in range(M)]
        return m


class DotPacker(wiring.Component):
    """The dots of one K word into S-lane output beats, `latency` = `PACK_LATENCY` cycles.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)

    Ports
    -----
    word : In(`word_layout`(cfg))
        The descriptor of the word whose dots are on ``dots`` (``valid`` = 0: none this cycle).
    dots : In(`hw.common.adder_tree.level_sums_layout`(signed(2W), M, 3))
        The word's sums at every level: level log2(d) holds its g = M/d dots at head dimension
        d, in key order.
    beat : Out(`dots_layout`(cfg)), beat_valid : Out(1)
        A beat (registered) in the cycles with ``beat_valid`` high: the word's dots, lanes >=
        ``count`` zero. When g <= S, S/g words fill a beat (``pos`` places each) and the
        query's last word closes its beat early; when g > S a word gives ceil(nvalid/S) beats
        in consecutive cycles, during which ``word.valid`` must stay low (`QKIssue` paces it).
    macs : Out(32)
        nvalid x d summed over the words, wrapping.

    A word on ``word``/``dots`` in cycle t gives its (first) beat in cycle t + `latency` when
    it completes one.
    """

    def __init__(self, *, config):
        cfg = self.config = _check_config(config)
        #: cycles from a word's dots to its first beat: gather, pack
        self.latency = PACK_LATENCY
        super().__init__({
            "word": In(word_layout(cfg)),
            "dots": In(level_sums_layout(signed(2 * cfg.data_width), cfg.qk_mults, MIN_D_LOG2)),
            "beat": Out(dots_layout(cfg)),
            "beat_valid": Out(1),
            "macs": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        L, S = _log2(cfg.qk_mults), cfg.softmax_lanes
        G = cfg.qk_mults >> MIN_D_LOG2
        levels = range(MIN_D_LOG2, L + 1)
        word = self.word

        def g_of(lv):
            return 1 << (L - lv)

        # gather: R holds the dots of one word (g <= G of them); when g > S it is shifted by S
        # every cycle while the word's beats go out
        R = Signal(data.ArrayLayout(signed(cfg.dot_width), G), reset_less=True)
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
        with m.If(word.valid):
            m.d.sync += [rv.eq(1), rl.eq(word.l), rnv.eq(word.nvalid), rlast.eq(word.last),
                         rpos.eq(word.pos), macs.eq(macs + (word.nvalid << word.l))]
            with m.Switch(word.l):
                for lv in levels:
                    with m.Case(lv):
                        dots = getattr(self.dots, f"level{lv}")
                        m.d.sync += [R[i].eq(dots[i]) for i in range(g_of(lv))]
        with m.Elif(rv & r_big & (rnv > S)):
            m.d.sync += [rnv.eq(rnv - S)]
            m.d.sync += [R[i].eq(R[i + S]) for i in range(G - S)]
        with m.Else():
            m.d.sync += rv.eq(0)

        # pack: the registered S-lane beat
        beat = self.beat
        m.d.sync += self.beat_valid.eq(0)
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
                                self.beat_valid.eq(1),
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
                                self.beat_valid.eq((rpos == S // g - 1) | rlast),
                            ]
        return m


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

    Pipeline (from a read in cycle t by `QKIssue`; a number is the clock edge that registers
    the stage): t+1 the K word and the query's q in fabric registers, t+2 multiplier input
    registers, t+3 products (`hw.common.dsp.Multiplier`: a MULT18X18D with its registers on ECP5),
    then one register per adder-tree level (`hw.common.adder_tree.AdderTree`: t+3+k for level k,
    L = log2 M levels); the sums of level log2(d) are delayed to the depth of level L,
    gathered (t+L+4) and packed into an S-lane beat (t+L+5) by `DotPacker`, written to a
    `SyncFIFOBuffered` (t+L+6) and offered on ``o`` from t+L+8 (`AttentionConfig.
    qk_read_latency`).
    """


    def __init__(self, *, config):
        cfg = self.config = _check_config(config)
        self.depth = k_depth(cfg)
        self.addr_width = (self.depth - 1).bit_length()
        #: cycles from a K read to its first beat on ``o``
        self.read_latency = cfg.qk_read_latency
        assert self.read_latency == (K_READ_STAGES + MULTIPLIER_REGISTERS.latency
                                     + _log2(cfg.qk_mults)
                                     + PACK_LATENCY + FIFO_LATENCY), "stages of qk_read_latency"
        #: largest number of beats one word produces
        self.max_word_beats = max_word_beats(cfg)
        #: output FIFO entries: enough for the beats of `read_latency` cycles plus one word
        self.fifo_depth = output_fifo_depth(cfg)
        self.latency = qk_latency(cfg)
        super().__init__({
            "q": In(stream.Signature(q_layout(cfg))),
            "d_log2": In(range(_log2(cfg.qk_mults) + 1)),
            "n": In(range(cfg.capacity + 1)),
            "k_rd": In(ReadPort.Signature(addr_width=self.addr_width, shape=k_word_layout(cfg))),
            "o": Out(stream.Signature(dots_layout(cfg))),
            "busy": Out(1),
            "macs": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        W, M = cfg.data_width, cfg.qk_mults

        m.submodules.issue = issue = QKIssue(config=cfg)
        wiring.connect(m, wiring.flipped(self.q), issue.q)
        m.d.comb += [issue.d_log2.eq(self.d_log2), issue.n.eq(self.n),
                     self.k_rd.en.eq(issue.k_rd_en), self.k_rd.addr.eq(issue.k_rd_addr),
                     self.busy.eq(issue.busy)]

        # the K word and its q registered in the fabric (a block-RAM read is slow), then the
        # multipliers' input and product registers (inside the DSP blocks on ECP5); the word's
        # descriptor follows
        kreg = Signal(k_word_layout(cfg), reset_less=True)
        qm = Signal(q_layout(cfg), reset_less=True)
        m.d.sync += [kreg.eq(self.k_rd.data), qm.eq(issue.word_q)]
        products = []
        for j in range(M):
            mul = m.submodules[f"mul{j}"] = Multiplier(a_shape=signed(W), b_shape=signed(W),
                                                       registers=MULTIPLIER_REGISTERS)
            m.d.comb += [mul.a.eq(kreg[j]), mul.b.eq(qm[j])]
            products.append(mul.p)
        words = [issue.word]
        for stage in ("kreg", *(f"mul_stage{k}" for k in range(mul.latency))):
            words.append(Signal(word_layout(cfg), name=f"word_{stage}"))
            m.d.sync += words[-1].eq(words[-2])

        # the dots at every d, then the beats, then the output FIFO
        m.submodules.tree = tree = AdderTree(term_shape=signed(2 * W), terms=M,
                                             min_level=MIN_D_LOG2, tag_shape=word_layout(cfg))
        m.d.comb += [tree.tag.eq(words[-1])]
        m.d.comb += [tree.terms[j].eq(p) for j, p in enumerate(products)]
        m.submodules.pack = pack = DotPacker(config=cfg)
        m.d.comb += [pack.word.eq(tree.sums_tag), pack.dots.eq(tree.sums),
                     self.macs.eq(pack.macs)]
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=len(pack.beat.as_value()),
                                                    depth=self.fifo_depth)
        m.d.comb += [
            fifo.w_en.eq(pack.beat_valid),
            fifo.w_data.eq(pack.beat.as_value()),
            self.o.valid.eq(fifo.r_rdy),
            self.o.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.o.ready),
            issue.beat_taken.eq(self.o.valid & self.o.ready),
        ]
        return m
