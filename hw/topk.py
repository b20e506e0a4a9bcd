"""The top-k engine: radix select with P comparisons per cycle, exact ties, survivors in order.

Contract
--------
Input ``i`` (stream of beats, ``lanes`` values each): ``data[0..count-1]`` are values
``v[row*P + lane]``; every beat but the last has ``count == lanes``; the beat with ``last`` ends the
run (its count is 1..lanes). ``k`` and ``mode`` are sampled with the first beat of a run.

Output ``o`` (stream): the selected ``(index, value)`` pairs in ascending index order, packed
``lanes`` per beat (``index[0..count-1]``, ``value[0..count-1]``; lanes above read zero); only
the final beat (``last``) may be partial. A run that selects nothing (``k = 0``, or an error) emits
one beat with
``count = 0, last = 1``, so a consumer never waits for an end that does not come.

``mode = EXACT``: exactly ``k`` values: the ``k`` largest; of the values equal to the k-th
largest (``threshold``), the lowest indices. ``mode = STATISTICAL``: every value at or above
``mean + z * sigma`` (``hw/stat_threshold.py``), an approximate-k selection in one pass.

Status: ``busy`` from the first input beat to the last output beat; ``done`` (level) from then
until the next run starts; ``error`` and ``error_code`` (level, same lifetime as ``done``);
``threshold``, ``n``, ``selected``, ``select_cycles`` (cycles after the last input beat until the
threshold is known) and ``total_cycles`` (first input beat to last output beat, inclusive) are
valid with ``done``. Bad input (see `TopKError`) never hangs: the engine keeps accepting beats
until ``last``, then emits the empty packet with ``error`` set. A synchronous reset in the middle
of a run returns it to idle.

How it works (exact mode)
-------------------------
Values are kept as unsigned *keys* (sign bit flipped). The key is cut into D-bit digits from the
top. While the input streams in it is written to buffer A and the top digit's histogram is
gathered: for every bin b the count of candidates whose digit is >= b (2**D - 1 popcounts of P
flags per cycle). The bin that holds the k-th largest key is then known, and the number of keys
above it. Each later pass reads the candidates (buffer A for the first one, then the packed
survivors of the previous pass, ping-ponging between buffers B and C), keeps those in the chosen
bin (zero eliminator + beat packer, written back densely and shifted left by one digit, so that
every pass finds its digits at fixed places) and histograms the next digit. After the
last digit the k-th key is known exactly, and so is the number of keys equal to it that must be
kept. A final pass over A compares every key with it and emits the survivors in order, keeping
ties lowest index first. Selection costs about n/P + ceil(n/(P*2**D))/P + ... + 6 cycles a pass.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import TopKConfig

from .packer import BeatPacker
from .skid import SkidBuffer
from .stat_threshold import StatThreshold
from .zero_elim import PrefixCount, ZeroEliminator, compact_layout, keep_layout

__all__ = ["Mode", "ErrorCode", "TopK", "input_layout", "output_layout", "bin_picker",
           "set_ties", "count_ties"]


class Mode(enum.Enum, shape=2):
    EXACT = 0
    STATISTICAL = 1
    # 2 and 3 are not modes: a run started with them ends with ErrorCode.BAD_MODE.


class ErrorCode(enum.Enum, shape=3):
    NONE = 0
    N_ZERO = 1            # the run held no values
    N_OVER_CAPACITY = 2   # more values than the buffers hold
    K_OVER_N = 3          # k > n
    BAD_BEAT = 4          # count 0 or > lanes, or a partial beat that is not the last
    BAD_MODE = 5          # an unknown mode


def input_layout(cfg: TopKConfig) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.value_width), cfg.lanes),
        "count": range(cfg.lanes + 1),
        "last": 1,
    })


def output_layout(cfg: TopKConfig) -> data.StructLayout:
    return data.StructLayout({
        "index": data.ArrayLayout(unsigned(cfg.index_width), cfg.lanes),
        "value": data.ArrayLayout(signed(cfg.value_width), cfg.lanes),
        "count": range(cfg.lanes + 1),
        "last": 1,
    })


def bin_picker(m: Module, counts: list, name: str = "bs_sel"):
    """The radix bin select of the top-k engine and of value pruning's selector: ``counts[b]``
    (b = 0 .. NB) is the number of candidates with digit >= b minus those still to find
    (``counts[0] >= 0`` always, ``counts[NB] < 0``); the chosen bin is the highest b with
    ``counts[b] >= 0``. The sign bits form a thermometer code, so the select is one-hot and a
    pick is an AND-OR tree, not a priority chain. Returns ``pick(values)``: values[b] of the
    chosen bin."""
    bins = len(counts) - 1
    sel = [Signal(name=f"{name}{b}") for b in range(bins)]
    for b in range(bins):
        ok_b = ~counts[b][-1] if b else Const(1)
        ok_up = ~counts[b + 1][-1] if b + 1 < bins else Const(0)
        m.d.comb += sel[b].eq(ok_b & ~ok_up)

    def pick(values):
        acc = Mux(sel[0], values[0], 0)
        for b in range(1, bins):
            acc = acc | Mux(sel[b], values[b], 0)
        return acc
    return pick


def set_ties(ties_left, ties_cap, value, lanes: int) -> list:
    """Statements that set the keys equal to the threshold still to keep, and their cap per
    beat (min(value, lanes): all a beat of `lanes` keys can compare with)."""
    return [ties_left.eq(value), ties_cap.eq(Mux(value >= lanes, lanes, value))]


def count_ties(ties_left, ties_cap, tot, lanes: int) -> list:
    """Statements that take a beat's `tot` ties off ``ties_left`` and set the next beat's cap,
    from compares that run side by side (no subtraction before a compare)."""
    none_left = tot > ties_left
    return [
        ties_left.eq(Mux(none_left, 0, ties_left - tot)),
        ties_cap.eq(Mux(none_left, 0, Mux(ties_left >= tot + lanes, lanes,
                                          (ties_left - tot)[:len(ties_cap)]))),
    ]


class TopK(wiring.Component):
    """The top-k engine; see the module docstring for the contract.

    Parameters (keyword-only)
    -------------------------
    config : TopKConfig
        lanes P, value width W, capacity, digit width D.
    statistical : bool (default True)
        Build the statistical mode (moment sums, P squarers, the threshold unit). Without it,
        ``mode = STATISTICAL`` is refused like an unknown mode (``BAD_MODE``); a user that only
        selects exactly (the query pipeline's value pruning) saves P multipliers and their logic.
    """

    def __init__(self, *, config: TopKConfig, statistical: bool = True):
        if not isinstance(config, TopKConfig):
            raise TypeError(f"config must be a TopKConfig, not {config!r}")
        if not isinstance(statistical, bool):
            raise TypeError(f"statistical must be a bool, not {statistical!r}")
        self.statistical = statistical
        self.cfg = cfg = config
        super().__init__({
            "i": In(stream.Signature(input_layout(cfg))),
            "k": In(range(cfg.capacity + 1)),
            "mode": In(Mode),
            "o": Out(stream.Signature(output_layout(cfg))),
            "threshold": Out(signed(cfg.value_width)),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "n": Out(range(cfg.capacity + 1)),
            "selected": Out(range(cfg.capacity + 1)),
            "select_cycles": Out(32),
            "total_cycles": Out(32),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        P, W, D, L = cfg.lanes, cfg.value_width, cfg.digit_bits, cfg.digits
        R, CAP = cfg.rows, cfg.capacity
        NB = 1 << D                      # bins per digit
        KW = cfg.key_width
        row_shape = range(R + 1)
        cnt_shape = range(CAP + 1)
        d_shape = signed(cfg.count_width + 1)
        SIGN = 1 << (W - 1)
        elem = data.StructLayout({"key": unsigned(KW), "index": unsigned(cfg.index_width)})
        row_layout = data.ArrayLayout(unsigned(KW), P)

        m = Module()

        # ================================================================ buffers
        # Three regions of one memory (one read port, one write port): A holds the input keys
        # (row r = input beat r), B and C the packed candidates. One memory, not three, so that
        # the block RAM's output reaches R1 with no multiplexer (and fewer RAM blocks are used).
        rb = max(1, (R - 1).bit_length())       # row bits; region = address bits above them
        m.submodules.mem = mem = Memory(shape=row_layout, depth=(2 << rb) + R, init=[])
        wp = mem.write_port()
        rp = mem.read_port()

        def addr(region, row):
            return Cat(row[:rb], Const(region, 2) if isinstance(region, int) else region)

        # ================================================================ sub-units
        # The reader pipeline hands its beats to the zero eliminator through a skid buffer, so
        # it stalls on a registered ready, not on the ready chain of the units behind it.
        m.submodules.skid = skid = SkidBuffer(keep_layout(elem, P))
        m.submodules.ze = ze = ZeroEliminator(elem, P)
        wiring.connect(m, skid.o, ze.i)
        m.submodules.packer = packer = BeatPacker(elem, P, zero_above_count=True)
        m.submodules.eq_prefix = eq_prefix = PrefixCount(P)
        if self.statistical:
            m.submodules.stat = stat = StatThreshold(cfg)
        # ... and a second one between the zero eliminator and the packer: no ready path runs
        # through more than one of these units.
        m.submodules.mid_skid = mid_skid = SkidBuffer(compact_layout(elem, P))
        wiring.connect(m, ze.o, mid_skid.i)
        wiring.connect(m, mid_skid.o, packer.i)

        # ================================================================ state
        k_reg = Signal(cnt_shape)
        mode_reg = Signal(Mode)
        n_reg = Signal(range(CAP + P + 1))      # values received (stops growing past capacity)
        err = Signal(ErrorCode)
        in_row = Signal(row_shape)              # next row of A to write
        first = Signal(init=1)                  # the next input beat starts a run
        total_cnt = Signal(32)
        select_cnt = Signal(32)
        counting_total = Signal()
        counting_select = Signal()
        selected_cnt = Signal(cnt_shape)
        ran = Signal()                          # a run has finished since reset

        # radix select
        neg_k_rem = Signal(d_shape)             # -(how many are still to find among them)
        cand = Signal(cnt_shape)                # current candidates (share the chosen digits)
        hdig = Signal(range(max(L, 2)), init=L - 1)  # digit histogrammed by the current pass
        fbin = Signal(D)                        # chosen bin of digit hdig + 1 (the filter)
        filt = Signal()                         # candidate pass: filter on digit hdig + 1
        thr_key = Signal(KW)
        sel_all = Signal()                      # statistical: keep everything
        out_pass = Signal()                     # the reader runs the output pass
        ties_left = Signal(cnt_shape)           # keys equal to the threshold still to keep
        ties_cap = Signal(range(P + 1))         # min(ties_left, P): all a beat can compare to

        def set_ties_to(value):
            return set_ties(ties_left, ties_cap, value, P)

        # reader
        src = Signal(range(3))                  # 0: A, 1: B, 2: C
        rd_row = Signal(row_shape)
        rd_elems = Signal(cnt_shape)            # elements in the rows this pass reads
        rd_final = Signal(range(R))             # the last row it reads: (elems - 1) // P
        reading = Signal()

        # bin select
        bs_go = Signal()
        bs_valid = Signal()
        bs_bin = Signal(D)
        bs_dat = Signal(d_shape)
        bs_dab = Signal(d_shape)
        bs_in_bin = Signal(cnt_shape)
        final_commit = Signal()                 # the commit of the last digit

        # writer of candidates into B / C
        wdst = Signal()                         # 0: B, 1: C
        pend = Signal(range(3))                 # candidate passes whose rows are still coming
        avail = [Signal(row_shape, name="avail_b"), Signal(row_shape, name="avail_c")]  # rows done
        wdone = [Signal(name="wdone_b"), Signal(name="wdone_c")]                        # all done
        wr_row = Signal(row_shape)

        # pipeline M -> R1 -> (H1 -> D | R2 -> R3) -> zero eliminator -> packer
        adv = Signal()                          # the reader pipeline moves this cycle
        m_valid = Signal()
        m_row = Signal(range(R))
        m_last = Signal()
        r1_valid = Signal()
        r1_keys = Signal(row_layout)
        r1_lane_ok = Signal(P)
        r1_row = Signal(range(R))
        r1_last = Signal()
        r1_from_input = Signal()
        r2_valid = Signal()
        r3_valid = Signal()

        # ================================================================ input side
        in_beat = self.i.payload
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        in_keys = Signal(row_layout)
        in_lane_ok = Signal(P)
        for lane in range(P):
            m.d.comb += [
                in_keys[lane].eq(in_beat.data[lane].as_unsigned() ^ SIGN),
                in_lane_ok[lane].eq(in_beat.count > lane),
            ]

        # ================================================================ reader (issue, M)
        m.d.comb += [rp.addr.eq(addr(src, rd_row)), rp.en.eq(adv)]
        rd_data = rp.data

        # A pass reading B or C must not overtake the writer of the pass before it: row r may be
        # read once the writer has finished it (the cycle after its write) or the whole buffer.
        can_read = Signal()
        with m.Switch(src):
            with m.Case(0):
                m.d.comb += can_read.eq(1)
            for s_idx in (1, 2):
                with m.Case(s_idx):
                    j = s_idx - 1
                    m.d.comb += can_read.eq(wdone[j] | (rd_row < avail[j]))
        issue = Signal()
        rd_last = Signal()
        m.d.comb += [
            issue.eq(reading & adv & can_read),
            rd_last.eq(rd_row == rd_final),
        ]
        with m.If(adv):
            m.d.sync += [m_valid.eq(issue), m_row.eq(rd_row), m_last.eq(rd_last)]
        with m.If(issue):
            m.d.sync += rd_row.eq(rd_row + 1)
            with m.If(rd_last):
                m.d.sync += reading.eq(0)
        m_lane_ok = Signal(P)
        for lane in range(P):
            m.d.comb += m_lane_ok[lane].eq(((m_row << cfg.lane_bits) + lane) < rd_elems)

        # R1 holds a row of keys from the input stream or from a buffer.
        with m.If(take):
            m.d.sync += [
                r1_valid.eq(1), r1_keys.eq(in_keys), r1_lane_ok.eq(in_lane_ok),
                r1_row.eq(Mux(first, 0, in_row)), r1_last.eq(in_beat.last),
                r1_from_input.eq(1),
            ]
        with m.Elif(adv):
            m.d.sync += [
                r1_valid.eq(m_valid), r1_keys.eq(rd_data), r1_lane_ok.eq(m_lane_ok),
                r1_row.eq(m_row), r1_last.eq(m_last), r1_from_input.eq(0),
            ]

        # Digits sit at fixed places: a candidate pass writes its survivors back shifted left
        # by one digit (they all share the digit it filtered on), so every pass filters on the
        # top digit of what it reads and histograms the second; the input pass histograms the
        # top digit. (No variable digit select on the critical path.)
        def top(key):
            return key[KW - D:]

        def second(key):
            return key[KW - 2 * D:KW - D] if L > 1 else key[KW - D:]

        r1_match = Signal(P)                    # in the pass, and in the filter's bin
        for lane in range(P):
            in_bin = (top(r1_keys[lane]) == fbin) if L > 1 else Const(1)
            m.d.comb += r1_match[lane].eq(r1_lane_ok[lane] & (~filt | in_bin))

        # ================================================================ histogram (H1, D)
        # H1 registers ge[b][lane] = match & (digit >= b). The next stage adds the popcount of
        # each ge[b] into dcnt[b], which starts at -k_rem (k_rem: how many of the k largest are
        # still to find among the candidates): dcnt[b] = (candidates with digit >= b) - k_rem.
        # Its sign says whether the k-th largest key has a digit >= b, so the bin is
        # known without a compare stage: the highest b with dcnt[b] >= 0 (dcnt[0] = cand - k_rem
        # >= 0 always).
        r1_hist = Signal()
        m.d.comb += r1_hist.eq(r1_valid & adv & ~out_pass)
        h1_valid = Signal()
        h1_ge = [None] + [Signal(P, name=f"h1_ge{b}") for b in range(1, NB)]
        m.d.sync += h1_valid.eq(r1_hist)
        for b in range(1, NB):
            m.d.sync += h1_ge[b].eq(Cat(*[
                r1_match[lane]
                & (Mux(filt, second(r1_keys[lane]), top(r1_keys[lane])) >= b)
                for lane in range(P)]))
        dcnt = [Signal(d_shape, name=f"dcnt{b}") for b in range(NB + 1)]
        d_load = Signal()
        d_init = Signal(d_shape)
        with m.If(d_load):
            m.d.sync += [dcnt[b].eq(d_init) for b in range(1, NB)]
        with m.Elif(h1_valid):
            m.d.sync += [dcnt[b].eq(dcnt[b] + sum(h1_ge[b][lane] for lane in range(P)))
                         for b in range(1, NB)]
        # A run's first beat loads dcnt with -k one cycle later, from registers (its counts
        # reach dcnt two cycles after that).
        first_take = Signal()
        first_take_r = Signal()
        m.d.sync += first_take_r.eq(first_take)
        with m.If(first_take_r):
            m.d.comb += [d_load.eq(1), d_init.eq(-k_reg)]
        d0 = Signal(d_shape)
        m.d.comb += [dcnt[0].eq(d0), dcnt[NB].eq(neg_k_rem)]

        # ================================================================ bin select, commit
        # BS (one cycle, once the pass's counts are complete): pick the bin, register dcnt at it
        # and above it. Commit (the next cycle): k_rem = -dcnt[bin+1] (what is still to find
        # inside the bin), cand = dcnt[bin] - dcnt[bin+1] (the bin's population).
        # The sign bits form a thermometer code, so `sel` is one-hot and the selection is an
        # AND-OR tree (not a priority chain).
        m.d.sync += bs_valid.eq(bs_go)
        pick = bin_picker(m, dcnt)

        with m.If(bs_go):
            m.d.sync += [
                bs_bin.eq(pick([Const(b, D) for b in range(NB)])),
                bs_dat.eq(pick(dcnt[:NB])),
                bs_dab.eq(pick(dcnt[1:])),
            ]
        m.d.comb += bs_in_bin.eq(bs_dat - bs_dab)
        with m.If(bs_valid):
            m.d.sync += [
                neg_k_rem.eq(bs_dab),
                cand.eq(bs_in_bin),
                d0.eq(bs_dat),
                fbin.eq(bs_bin),
                thr_key.eq(Cat(bs_bin, thr_key[:-D]) if KW > D else bs_bin),
                *set_ties_to(-bs_dab),
            ]
            m.d.comb += [d_load.eq(1), d_init.eq(bs_dab)]

        # ================================================================ R2, R3
        # Candidate passes: R2 holds the row and its match flags (the zero eliminator's input).
        # Output pass: R2 compares with the threshold, R3 adds the tie ranks (keep flags).
        thr_ukey = Signal(KW)
        m.d.comb += thr_ukey.eq(thr_key)
        r2_gt = Signal(P)
        r2_eq = Signal(P)
        r2_match = Signal(P)
        r2_keys = Signal(row_layout)
        r2_row = Signal(range(R))
        r2_last = Signal()
        with m.If(adv):
            m.d.sync += [r2_valid.eq(r1_valid & ~r1_from_input & (out_pass | filt)),
                         r2_keys.eq(r1_keys), r2_row.eq(r1_row), r2_last.eq(r1_last),
                         r2_match.eq(r1_match)]
            eq_flags = []
            for lane in range(P):
                ok = r1_lane_ok[lane]
                eq_flags.append(ok & ~sel_all & (r1_keys[lane] == thr_ukey))
                m.d.sync += r2_gt[lane].eq(ok & (sel_all | (r1_keys[lane] > thr_ukey)))
            m.d.sync += r2_eq.eq(Cat(*eq_flags))
        m.d.comb += eq_prefix.flags.eq(r2_eq)
        # R3 registers the tie ranks (prefix counts) and the number of ties of the beat; R4 the
        # keep flags, from registers only: each compare is small and no popcount sits before it.
        r3_gt = Signal(P)
        r3_eq = Signal(P)
        r3_prefix = Signal(data.ArrayLayout(range(P), P))
        r3_eqn = Signal(range(P + 1))
        r3_keys = Signal(row_layout)
        r3_row = Signal(range(R))
        r3_last = Signal()
        with m.If(adv):
            m.d.sync += [r3_valid.eq(r2_valid & out_pass), r3_keys.eq(r2_keys), r3_row.eq(r2_row),
                         r3_last.eq(r2_last), r3_gt.eq(r2_gt), r3_eq.eq(r2_eq),
                         r3_eqn.eq(eq_prefix.total)]
            for lane in range(P):
                m.d.sync += r3_prefix[lane].eq(eq_prefix.prefix[lane])
        r4_valid = Signal()
        r4_keep = Signal(P)
        r4_keys = Signal(row_layout)
        r4_row = Signal(range(R))
        r4_last = Signal()
        with m.If(adv):
            m.d.sync += [r4_valid.eq(r3_valid), r4_keys.eq(r3_keys), r4_row.eq(r3_row),
                         r4_last.eq(r3_last)]
            for lane in range(P):
                m.d.sync += r4_keep[lane].eq(
                    r3_gt[lane] | (r3_eq[lane] & (r3_prefix[lane] < ties_cap)))
            with m.If(r3_valid):
                m.d.sync += count_ties(ties_left, ties_cap, r3_eqn, P)

        # ================================================================ zero eliminator input
        def shifted_key(key):                   # a survivor drops its (shared) top digit
            return Cat(Const(0, D), key[:KW - D]) if L > 1 else key

        # Candidate passes feed it from R2 (keep = match); the output pass from R3 (keep).
        ze_in_valid = Signal()
        m.d.comb += ze_in_valid.eq(Mux(out_pass, r4_valid, r2_valid))
        m.d.comb += skid.i.valid.eq(ze_in_valid)
        for lane in range(P):
            m.d.comb += [
                skid.i.payload.data[lane].key.eq(
                    Mux(out_pass, r4_keys[lane], shifted_key(r2_keys[lane]))),
                skid.i.payload.data[lane].index.eq(
                    Cat(Const(lane, cfg.lane_bits), Mux(out_pass, r4_row, r2_row))),
            ]
        m.d.comb += [
            skid.i.payload.keep.eq(Mux(out_pass, r4_keep, r2_match)),
            skid.i.payload.last.eq(Mux(out_pass, r4_last, r2_last)),
        ]
        m.d.comb += adv.eq(~ze_in_valid | skid.i.ready)

        # ================================================================ packer -> B/C or o
        # The packer's beats belong to a candidate pass while `pend` counts one (`to_mem`, a
        # register): they are written to B or C. Otherwise they go out, through a skid buffer
        # (so `o` is a register and `o.ready` reaches no further than that buffer).
        m.submodules.out_skid = out_skid = SkidBuffer(output_layout(cfg))
        wiring.connect(m, out_skid.o, wiring.flipped(self.o))
        to_mem = Signal()
        pk = packer.o.payload
        cand_row = Signal(row_layout)
        for lane in range(P):
            m.d.comb += cand_row[lane].eq(pk.data[lane].key)
        # (the input side overrides these in RECV; the two never write in the same cycle)
        m.d.comb += [wp.addr.eq(addr(wdst + 1, wr_row)), wp.data.eq(cand_row)]
        o = out_skid.i.payload
        for lane in range(P):                   # lanes at and above `count` read as zero
            used = pk.count > lane
            m.d.comb += [
                o.index[lane].eq(Mux(used, pk.data[lane].index, 0)),
                o.value[lane].eq(Mux(used, (pk.data[lane].key[:W] ^ SIGN).as_signed(), 0)),
            ]
        m.d.comb += [o.count.eq(pk.count), o.last.eq(pk.last)]
        pass_start_cand = Signal()              # a candidate pass starts (end of this cycle)
        pass_wbuf = Signal()                    # ... and writes this buffer
        wr_last = Signal()
        with m.If(to_mem):
            m.d.comb += packer.o.ready.eq(1)
            with m.If(packer.o.valid):
                m.d.comb += wp.en.eq(1)
                m.d.sync += wr_row.eq(wr_row + 1)
                with m.If(wdst):
                    m.d.sync += avail[1].eq(wr_row + 1)
                with m.Else():
                    m.d.sync += avail[0].eq(wr_row + 1)
                with m.If(pk.last):
                    m.d.comb += wr_last.eq(1)
                    m.d.sync += [wr_row.eq(0), wdst.eq(~wdst)]
                    with m.If(wdst):
                        m.d.sync += wdone[1].eq(1)
                    with m.Else():
                        m.d.sync += wdone[0].eq(1)
        with m.Else():
            m.d.comb += [out_skid.i.valid.eq(packer.o.valid), packer.o.ready.eq(out_skid.i.ready)]
        pend_next = Signal.like(pend)
        m.d.comb += pend_next.eq(pend + pass_start_cand - wr_last)
        m.d.sync += [pend.eq(pend_next), to_mem.eq(pend_next != 0)]
        with m.If(pass_start_cand):
            for j in (0, 1):
                with m.If(pass_wbuf == j):
                    m.d.sync += [avail[j].eq(0), wdone[j].eq(0)]

        # ================================================================ moments (statistical)
        mom_clear = Signal()                    # a run starts: clear the sums next cycle
        mom_wait = 0
        if self.statistical:
            # S1 = sum of values, S2 = sum of squares of the input beats (taken from R1).
            s1_w = W + cfg.count_width + 1
            s2_w = 2 * W + cfg.count_width
            # Stage 1 registers the (masked) values, stage 2 their squares (a multiplier fed from
            # a register, not from R1's fan-out), then an adder tree with a register per level.
            mom_valid1 = Signal()
            mom_valid = Signal()
            mom_v1 = [Signal(signed(W), name=f"mom_v1_{lane}") for lane in range(P)]
            mom_v = [Signal(signed(W), name=f"mom_v{lane}") for lane in range(P)]
            mom_q = [Signal(unsigned(2 * W), name=f"mom_q{lane}") for lane in range(P)]
            m.d.sync += [mom_valid1.eq(r1_valid & r1_from_input), mom_valid.eq(mom_valid1)]
            for lane in range(P):
                v = Mux(r1_lane_ok[lane], (r1_keys[lane][:W] ^ SIGN).as_signed(), 0)
                m.d.sync += [mom_v1[lane].eq(v), mom_v[lane].eq(mom_v1[lane]),
                             mom_q[lane].eq(mom_v1[lane] * mom_v1[lane])]
            level_v, level_q, level_valid, depth = mom_v, mom_q, mom_valid, 0
            while len(level_v) > 1:            # an adder tree with a register per level
                nv, nq = [], []
                for j in range(0, len(level_v), 2):
                    a = Signal(signed(s1_w), name=f"mom_s{depth}_{j}")
                    q = Signal(unsigned(s2_w), name=f"mom_q{depth}_{j}")
                    m.d.sync += [a.eq(level_v[j] + level_v[j + 1]),
                                 q.eq(level_q[j] + level_q[j + 1])]
                    nv.append(a)
                    nq.append(q)
                vv = Signal(name=f"mom_valid{depth}")
                m.d.sync += vv.eq(level_valid)
                level_v, level_q, level_valid, depth = nv, nq, vv, depth + 1
            acc_s1 = Signal(signed(s1_w))
            acc_s2 = Signal(unsigned(s2_w))
            mom_clear_r = Signal()                  # (its first beat reaches them 4 cycles later)
            m.d.sync += mom_clear_r.eq(mom_clear)
            with m.If(mom_clear_r):
                m.d.sync += [acc_s1.eq(0), acc_s2.eq(0)]
            with m.Elif(level_valid):
                m.d.sync += [acc_s1.eq(acc_s1 + level_v[0]), acc_s2.eq(acc_s2 + level_q[0])]
            # The last beat is in R1 in CHECK; its sums are in acc_* `depth + 3` cycles later.
            mom_wait = depth + 2
            stat_start = Signal()
            m.d.sync += stat_start.eq(0)
            m.d.comb += [stat.n.eq(n_reg), stat.k.eq(k_reg), stat.s1.eq(acc_s1),
                         stat.s2.eq(acc_s2), stat.start.eq(stat_start)]

        # ================================================================ counters, status
        with m.If(counting_total):
            m.d.sync += total_cnt.eq(total_cnt + 1)
        with m.If(counting_select):
            m.d.sync += select_cnt.eq(select_cnt + 1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += selected_cnt.eq(selected_cnt + self.o.payload.count)
        m.d.comb += [
            self.n.eq(Mux(n_reg > CAP, CAP, n_reg)),
            self.error_code.eq(err),
            self.error.eq(err != ErrorCode.NONE),
            self.threshold.eq((thr_key[:W] ^ SIGN).as_signed()),
            self.select_cycles.eq(select_cnt),
            self.total_cycles.eq(total_cnt),
            self.selected.eq(selected_cnt),
        ]

        # ================================================================ control
        wait = Signal(range(64))

        def start_reader(s, elems):
            return [src.eq(s), rd_row.eq(0), reading.eq(1), rd_elems.eq(elems),
                    rd_final.eq((elems - 1) >> cfg.lane_bits)]

        # Pass state for the next run is set here, not with its first beat (a shorter path from
        # the input handshake); reset leaves the same values.
        end_of_run = [counting_total.eq(0), counting_select.eq(0), out_pass.eq(0), ran.eq(1),
                      hdig.eq(L - 1), filt.eq(0), sel_all.eq(0)]

        with m.FSM(name="ctrl"):
            with m.State("RECV"):
                m.d.comb += [self.i.ready.eq(1), self.busy.eq(~first),
                             self.done.eq(first & ran)]
                with m.If(take):
                    row_now = Mux(first, 0, in_row)
                    n_now = Mux(first, 0, n_reg)
                    err_now = Mux(first, ErrorCode.NONE, err)
                    beat_err = Signal(ErrorCode)
                    with m.If(in_beat.count == 0):
                        m.d.comb += beat_err.eq(
                            Mux(first & in_beat.last, ErrorCode.N_ZERO, ErrorCode.BAD_BEAT))
                    with m.Elif((in_beat.count > P) | (~in_beat.last & (in_beat.count != P))):
                        m.d.comb += beat_err.eq(ErrorCode.BAD_BEAT)
                    with m.Elif(row_now >= R):
                        m.d.comb += beat_err.eq(ErrorCode.N_OVER_CAPACITY)
                    m.d.comb += [
                        wp.addr.eq(addr(0, row_now)), wp.data.eq(in_keys),
                        wp.en.eq((beat_err == ErrorCode.NONE) & (err_now == ErrorCode.NONE)),
                    ]
                    m.d.sync += [
                        in_row.eq(Mux(row_now >= R, R, row_now + 1)),
                        n_reg.eq(Mux(n_now > CAP, n_now, n_now + in_beat.count)),
                        err.eq(Mux(err_now != ErrorCode.NONE, err_now, beat_err)),
                        first.eq(in_beat.last),
                        counting_total.eq(1),
                    ]
                    with m.If(first):
                        m.d.sync += [
                            k_reg.eq(self.k), mode_reg.eq(self.mode), total_cnt.eq(1),
                            select_cnt.eq(0), selected_cnt.eq(0), ran.eq(0),
                        ]
                        m.d.comb += [first_take.eq(1), mom_clear.eq(1)]
                    with m.If(in_beat.last):
                        m.d.sync += counting_select.eq(1)
                        m.next = "CHECK"

            with m.State("CHECK"):
                # The cycle after the last input beat (which now sits in R1).
                m.d.comb += self.busy.eq(1)
                m.d.sync += [cand.eq(n_reg), neg_k_rem.eq(-k_reg), d0.eq(n_reg - k_reg),
                             wdst.eq(0), wait.eq(0)]
                with m.If(err != ErrorCode.NONE):
                    m.next = "EMPTY"
                with m.Elif((mode_reg != Mode.EXACT)
                            & ((mode_reg != Mode.STATISTICAL) | (not self.statistical))):
                    m.d.sync += err.eq(ErrorCode.BAD_MODE)
                    m.next = "EMPTY"
                with m.Elif(k_reg > n_reg):
                    m.d.sync += err.eq(ErrorCode.K_OVER_N)
                    m.next = "EMPTY"
                with m.Elif(k_reg == 0):
                    m.d.sync += thr_key.eq(SIGN * 2 - 1)
                    m.next = "EMPTY"
                if self.statistical:
                    with m.Elif(mode_reg == Mode.STATISTICAL):
                        m.d.sync += wait.eq(mom_wait)
                        m.next = "MOMENTS"
                with m.Else():
                    m.next = "HIST_DRAIN"

            with m.State("HIST_DRAIN"):
                # The last input beat is in H1 now; its counts are in dcnt next cycle.
                m.d.comb += self.busy.eq(1)
                m.next = "BIN_SELECT"

            with m.State("BIN_SELECT"):
                # dcnt is complete: pick the bin (it commits next cycle) and start the next pass
                # now; its first row reaches R1, where the new bin is needed, after the commit.
                m.d.comb += [self.busy.eq(1), bs_go.eq(1)]
                with m.If(hdig == 0):
                    m.d.comb += final_commit.eq(1)
                    m.d.sync += [out_pass.eq(1), *start_reader(0, n_reg)]
                    m.next = "OUTPUT"
                with m.Else():
                    m.d.sync += [hdig.eq(hdig - 1), filt.eq(1)]
                    m.d.comb += pass_start_cand.eq(1)
                    with m.If(hdig == L - 1):
                        m.d.sync += start_reader(0, n_reg)
                        m.d.comb += pass_wbuf.eq(0)
                    with m.Else():
                        # read what the previous pass wrote (`cand` values: the commit of this
                        # bin select updates `cand` only at the end of the next cycle), write
                        # the other buffer
                        m.d.sync += start_reader(Mux(src == 1, 2, 1), cand)
                        m.d.comb += pass_wbuf.eq(src != 1)
                    m.next = "PASS"

            with m.State("PASS"):
                m.d.comb += self.busy.eq(1)
                with m.If(~reading & ~m_valid & ~r1_valid):
                    # Every row has passed R1: the last one is in H1, its counts in dcnt next.
                    m.next = "BIN_SELECT"

            if self.statistical:
                with m.State("MOMENTS"):
                    m.d.comb += self.busy.eq(1)
                    m.d.sync += wait.eq(wait - 1)
                    with m.If(wait == 0):
                        # a registered start pulse (the statistical unit sees it next cycle)
                        m.d.sync += stat_start.eq(1)
                        m.next = "STAT"

                with m.State("STAT"):
                    m.d.comb += self.busy.eq(1)
                    with m.If(stat.done):
                        m.d.sync += [counting_select.eq(0),
                                     thr_key.eq(stat.threshold.as_unsigned() ^ SIGN)]
                        with m.If(stat.select_none):
                            m.next = "EMPTY"
                        with m.Else():
                            m.d.sync += [sel_all.eq(stat.select_all), *set_ties_to(CAP),
                                         out_pass.eq(1), *start_reader(0, n_reg)]
                            m.next = "OUTPUT"

            with m.State("OUTPUT"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.d.sync += end_of_run
                    m.next = "RECV"

            with m.State("EMPTY"):
                # One beat with count 0 and last: the packet of a run that selects nothing.
                m.d.comb += [self.busy.eq(1), out_skid.i.valid.eq(1),
                             o.eq(output_layout(cfg).const({"count": 0, "last": 1}))]
                with m.If(out_skid.i.ready):
                    m.next = "EMPTY_OUT"

            with m.State("EMPTY_OUT"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.o.valid & self.o.ready):
                    m.d.sync += end_of_run
                    m.next = "RECV"

        # The select counter runs from the cycle after the last input beat to the commit of the
        # last digit (exact) or the statistical threshold's `done` (both inclusive).
        final_d = Signal()
        m.d.sync += final_d.eq(final_commit)
        with m.If(bs_valid & final_d):
            m.d.sync += counting_select.eq(0)

        return m
