"""Local value pruning's selector: the ``k`` largest probabilities of each row, kept in index order.

The query pipeline's top-k stage (`hw/attention.py`). It selects what the top-k engine's exact
mode selects (`golden.attention.value_select`: the ``k`` largest, of the values equal to the
k-th largest the lowest indices, in ascending index order), from a row stream of S lanes to a
row stream of S (index, probability) pairs, but is built for that stage rather than for any k
of any stream:

- **No compaction.** The engine writes the survivors of each radix pass back into a buffer of
  their own (zero eliminator, beat packer) so that later passes read fewer rows; probabilities
  are small numbers, whose top digits hardly part them (512 -> 509 -> 473 of 512 survivors on
  real rows), so here every pass re-reads the whole row from buffer A and filters on the digits
  chosen so far. Only the output pass compacts, S pairs a cycle.
- **Two rows at once.** A has two banks: row i + 1 streams in (and its top digit is counted)
  while row i is selected. A row costs max(load, selection) instead of their sum.

Ports
-----
i : In(stream.Signature(row_layout(unsigned(prob_bits), S)))
    One row per packet: every beat full (``count = S``) except the last (``last``, count 1..S).
k : In(range(capacity + 1))
    How many to keep; sampled with a row's first beat.
o : Out(stream.Signature(row_layout(pair_layout, S)))
    One packet per row, in the order of the rows: the kept (index, prob) pairs in ascending
    index order, S a beat, only the final beat (``last``) partial; lanes above ``count`` are
    zero. A row that keeps nothing (``k = 0``, or an error) is one beat with ``count = 0``.
busy : Out(1)
    A row has been started and its output packet has not been sent.
error, error_code : Out(1), Out(ErrorCode)
    The status of the row the selector took last (from the moment it takes it to the moment it
    takes the next): ``N_ZERO`` (a row of one empty beat), ``N_OVER_CAPACITY``, ``BAD_BEAT``
    (count 0 or > S, or a partial beat that is not the last), ``K_OVER_N``. Such a row emits the
    empty packet; the next row is selected as usual.
threshold : Out(prob_bits)
    The k-th largest probability of that row, once its selection is done.

How it works
------------
Keys are the probabilities (U0.16), cut into L digits of D bits from the top
(D = ``topk_digit_bits``). The loader writes each row into its bank of A, S keys a cycle (A's
rows are P keys wide, P = ``topk_lanes``), and counts, for every bin b of the top digit, the
keys whose digit is >= b, minus k. When the selector is free it takes the row with those
counts, picks the top digit's bin (the highest whose count is >= 0), and runs L - 1 candidate
passes over A, P keys a cycle: each keeps the keys whose digits above the current one equal the
bins chosen so far and counts their current digit the same way. After the last digit the k-th
largest key is known exactly, and how many keys equal to it must be kept. The output pass reads
A once more, flags every key above the threshold and the first ties, and a serializer sends the
flagged keys of each P-key row S at a time into a beat packer.

Cycles (one row of n keys, k < n, nothing else in flight, no stalls): load ceil(n/S) beats;
the selector takes the row 3 cycles after its last beat; 2 + (L - 1) (ceil(n/P) + 4) cycles of
bin selects and candidate passes; the output pass one cycle a P-key row plus one per further S
kept keys of that row, and 9 or 10 cycles of pipeline (`golden.select_cycles` gives the exact
figure). With a stream of rows the load of the next row hides behind the selection of this
one: the selector takes a row every max(load + 3, selection + output pass) cycles.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from .packer import BeatPacker
from .rowstream import row_layout
from .skid import SkidBuffer
from .topk import ErrorCode, bin_picker, count_ties, set_ties
from .zero_elim import PrefixCount

__all__ = ["ValueSelect", "pair_layout"]


def pair_layout(cfg: AttentionConfig) -> data.StructLayout:
    """One kept key: its index in the row and its probability."""
    return data.StructLayout({"index": unsigned(cfg.index_width),
                              "prob": unsigned(cfg.prob_bits)})


def _log2(x: int) -> int:
    return x.bit_length() - 1


class ValueSelect(wiring.Component):
    """The selector of local value pruning; see the module docstring for the contract.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)
        S = softmax_lanes (input and output pairs a beat), P = topk_lanes (keys a pass reads a
        cycle), D = topk_digit_bits, capacity (the longest row).
    """

    def __init__(self, *, config):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be a spatten.config.AttentionConfig, not {config!r}")
        self.config = cfg = config
        super().__init__({
            "i": In(stream.Signature(row_layout(unsigned(cfg.prob_bits), cfg.softmax_lanes))),
            "k": In(range(cfg.capacity + 1)),
            "o": Out(stream.Signature(row_layout(pair_layout(cfg), cfg.softmax_lanes))),
            "busy": Out(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "threshold": Out(cfg.prob_bits),
        })

    def elaborate(self, platform):
        cfg = self.config
        S, P, D, KW, N = (cfg.softmax_lanes, cfg.topk_lanes, cfg.topk_digit_bits,
                          cfg.prob_bits, cfg.capacity)
        L = -(-KW // D)                       # digits
        KP = L * D                            # key width padded to whole digits
        NB = 1 << D                           # bins per digit
        R = N // P                            # A rows of one bank
        G = P // S                            # input beats per A row
        LP, LG = _log2(P), _log2(G)
        rb = max(1, (R - 1).bit_length())     # A row address bits (then the bank bit)
        cnt_shape = range(N + 1)
        d_shape = signed(N.bit_length() + 1)
        row_keys = data.ArrayLayout(unsigned(KW), P)

        m = Module()

        # ================================================================ buffer A (two banks)
        m.submodules.mem = mem = Memory(shape=row_keys, depth=2 << rb, init=[])
        wp = mem.write_port(granularity=S)
        rp = mem.read_port()

        def addr(row, bank):
            row = Value.cast(row)
            return Cat(row[:rb], Const(0, rb - min(rb, len(row))), bank)

        def top_digit(key):
            return key.as_unsigned()[(L - 1) * D:] if KP == KW else \
                Cat(key, Const(0, KP - KW))[(L - 1) * D:]

        # ================================================================ loader
        # Takes a row into bank `lb` and counts its top digit (lcnt[b] = keys with digit >= b,
        # minus k); holds it (`l_full`) until the selector takes it, then loads the other bank.
        l_first = Signal(init=1)              # the next beat starts a row
        l_full = Signal()                     # a whole row waits for the selector
        lb = Signal()
        l_pos = Signal(range(R * G + 1))      # beats of the row so far (stops at R * G)
        l_n = Signal(range(N + S + 1))        # keys so far (stops growing past capacity)
        l_k = Signal(cnt_shape)
        l_err = Signal(ErrorCode)
        runs_in = Signal(8)                   # rows whose last beat was taken
        runs_out = Signal(8)                  # packets whose last beat was sent

        beat = self.i.payload
        take = Signal()
        m.d.comb += [self.i.ready.eq(~l_full), take.eq(self.i.valid & ~l_full)]
        pos_now = Mux(l_first, 0, l_pos)
        n_now = Mux(l_first, 0, l_n)
        err_now = Mux(l_first, ErrorCode.NONE, l_err)
        beat_err = Signal(ErrorCode)
        with m.If(beat.count == 0):
            m.d.comb += beat_err.eq(Mux(l_first & beat.last, ErrorCode.N_ZERO,
                                        ErrorCode.BAD_BEAT))
        with m.Elif((beat.count > S) | (~beat.last & (beat.count != S))):
            m.d.comb += beat_err.eq(ErrorCode.BAD_BEAT)
        with m.Elif(pos_now >= R * G):
            m.d.comb += beat_err.eq(ErrorCode.N_OVER_CAPACITY)
        m.d.comb += [
            wp.addr.eq(addr(pos_now >> LG, lb)),
            wp.en.eq(Mux(take & (beat_err == ErrorCode.NONE) & (err_now == ErrorCode.NONE),
                         1 << (pos_now[:LG] if LG else 0), 0)),
        ]
        for g in range(G):
            for j in range(S):
                m.d.comb += wp.data[g * S + j].eq(beat.data[j])
        with m.If(take):
            m.d.sync += [
                l_pos.eq(Mux(pos_now >= R * G, R * G, pos_now + 1)),
                l_n.eq(Mux(n_now > N, n_now, n_now + beat.count)),
                l_err.eq(Mux(err_now != ErrorCode.NONE, err_now, beat_err)),
                l_first.eq(beat.last),
            ]
            with m.If(l_first):
                m.d.sync += l_k.eq(self.k)
            with m.If(beat.last):
                m.d.sync += [l_full.eq(1), runs_in.eq(runs_in + 1)]

        # top digit histogram: L1 registers the keys, L2 the flags digit >= b, then the counts
        l1_v, l1_first = Signal(), Signal()
        l1_key = [Signal(KW, name=f"l1_key{j}") for j in range(S)]
        l1_ok = Signal(S)
        m.d.sync += [l1_v.eq(take), l1_first.eq(take & l_first)]
        with m.If(take):
            m.d.sync += [l1_key[j].eq(beat.data[j]) for j in range(S)]
            m.d.sync += l1_ok.eq(Cat(*[beat.count > j for j in range(S)]))
        l2_v, l2_first = Signal(), Signal()
        l2_ge = [None] + [Signal(S, name=f"l2_ge{b}") for b in range(1, NB)]
        m.d.sync += [l2_v.eq(l1_v), l2_first.eq(l1_first)]
        for b in range(1, NB):
            m.d.sync += l2_ge[b].eq(Cat(*[l1_ok[j] & (top_digit(l1_key[j]) >= b)
                                          for j in range(S)]))
        lcnt = [None] + [Signal(d_shape, name=f"lcnt{b}") for b in range(1, NB)]
        with m.If(l2_v):
            for b in range(1, NB):
                base = Mux(l2_first, -l_k, lcnt[b])
                m.d.sync += lcnt[b].eq(base + sum(l2_ge[b][j] for j in range(S)))

        # ================================================================ selector state
        sb = Signal()                         # the bank the selector reads
        s_n = Signal(range(N + S + 1))
        s_k = Signal(cnt_shape)
        s_err = Signal(ErrorCode)
        neg_k_rem = Signal(d_shape)           # -(how many are still to find among the candidates)
        d0 = Signal(d_shape)                  # candidates - k_rem
        hdig = Signal(range(max(L, 2)))       # digit histogrammed by the current pass
        pfx = Signal(KP)                      # the digits chosen so far, at their places
        mask = Signal(KP)                     # ... and which digits they are
        out_pass = Signal()
        ties_left = Signal(cnt_shape)
        ties_cap = Signal(range(P + 1))

        # reader
        rd_row = Signal(range(R))
        rd_final = Signal(range(R))
        reading = Signal()
        adv = Signal()                        # the reader pipeline moves this cycle
        issue = Signal()
        rd_last = Signal()
        m.d.comb += [
            rp.addr.eq(addr(rd_row, sb)), rp.en.eq(adv),
            issue.eq(reading & adv), rd_last.eq(rd_row == rd_final),
        ]
        m_valid, m_last = Signal(), Signal()
        m_row = Signal(range(R))
        with m.If(adv):
            m.d.sync += [m_valid.eq(issue), m_row.eq(rd_row), m_last.eq(rd_last)]
        with m.If(issue):
            m.d.sync += rd_row.eq(rd_row + 1)
            with m.If(rd_last):
                m.d.sync += reading.eq(0)

        # R1: a row of A and its valid lanes
        r1_valid, r1_last = Signal(), Signal()
        r1_keys = Signal(row_keys)
        r1_ok = Signal(P)
        r1_row = Signal(range(R))
        with m.If(adv):
            m.d.sync += [r1_valid.eq(m_valid), r1_keys.eq(rp.data), r1_row.eq(m_row),
                         r1_last.eq(m_last)]
            m.d.sync += r1_ok.eq(Cat(*[((m_row << LP) + lane) < s_n for lane in range(P)]))

        # ================================================================ pass histogram
        # H1: ge[b][lane] = the key matches the chosen digits and its current digit is >= b;
        # then dcnt[b] += popcount (dcnt[b] = candidates with digit >= b, minus k_rem)
        h1_valid = Signal()
        m.d.sync += h1_valid.eq(r1_valid & adv & ~out_pass)
        h1_ge = [None] + [Signal(P, name=f"h1_ge{b}") for b in range(1, NB)]
        r1_match = Signal(P)
        r1_dig = [Signal(D, name=f"r1_dig{lane}") for lane in range(P)]
        for lane in range(P):
            key = Cat(r1_keys[lane], Const(0, KP - KW)) if KP > KW else r1_keys[lane]
            m.d.comb += [r1_match[lane].eq(r1_ok[lane] & (((key ^ pfx) & mask) == 0)),
                         r1_dig[lane].eq(key.word_select(hdig, D))]
        for b in range(1, NB):
            m.d.sync += h1_ge[b].eq(Cat(*[r1_match[lane] & (r1_dig[lane] >= b)
                                          for lane in range(P)]))
        dcnt = [Signal(d_shape, name=f"dcnt{b}") for b in range(NB + 1)]
        d_load = Signal()
        d_init = [Signal(d_shape, name=f"d_init{b}") for b in range(NB)]
        with m.If(d_load):
            m.d.sync += [dcnt[b].eq(d_init[b]) for b in range(1, NB)]
        with m.Elif(h1_valid):
            m.d.sync += [dcnt[b].eq(dcnt[b] + sum(h1_ge[b][lane] for lane in range(P)))
                         for b in range(1, NB)]
        m.d.comb += [dcnt[0].eq(d0), dcnt[NB].eq(neg_k_rem)]

        # ================================================================ bin select, commit
        # BS: the highest bin whose count is >= 0 (the signs form a thermometer code: `sel` is
        # one-hot); the commit, a cycle later: k_rem, the candidates, the digit's place in pfx.
        bs_go, bs_valid = Signal(), Signal()
        bs_bin = Signal(D)
        bs_dat, bs_dab = Signal(d_shape), Signal(d_shape)
        bs_dig = Signal.like(hdig)
        m.d.sync += bs_valid.eq(bs_go)
        pick = bin_picker(m, dcnt)

        with m.If(bs_go):
            m.d.sync += [bs_bin.eq(pick([Const(b, D) for b in range(NB)])),
                         bs_dat.eq(pick(dcnt[:NB])), bs_dab.eq(pick(dcnt[1:])),
                         bs_dig.eq(hdig)]
        with m.If(bs_valid):
            for h in range(L):
                with m.If(bs_dig == h):
                    m.d.sync += [pfx[h * D:(h + 1) * D].eq(bs_bin),
                                 mask[h * D:(h + 1) * D].eq(NB - 1)]
            m.d.sync += [neg_k_rem.eq(bs_dab), d0.eq(bs_dat)]
            # (only the last digit's commit sets the ties: the output rows of the row before
            # may still be on their way through R3 and R4 during the earlier ones)
            with m.If(bs_dig == 0):
                m.d.sync += set_ties(ties_left, ties_cap, -bs_dab, P)
            m.d.comb += [d_load.eq(1)] + [d_init[b].eq(bs_dab) for b in range(1, NB)]

        # ================================================================ output pass: R2-R4
        # R2 compares with the threshold, R3 adds the tie ranks, R4 the keep flags (as the
        # top-k engine's output pass)
        m.submodules.eq_prefix = eq_prefix = PrefixCount(P)
        thr = pfx[:KW]
        r2_valid, r3_valid, r4_valid = Signal(), Signal(), Signal()
        r2_gt, r2_eq = Signal(P), Signal(P)
        r2_keys, r3_keys, r4_keys = Signal(row_keys), Signal(row_keys), Signal(row_keys)
        r2_row, r3_row, r4_row = Signal(range(R)), Signal(range(R)), Signal(range(R))
        r2_last, r3_last, r4_last = Signal(), Signal(), Signal()
        with m.If(adv):
            m.d.sync += [r2_valid.eq(r1_valid & out_pass), r2_keys.eq(r1_keys),
                         r2_row.eq(r1_row), r2_last.eq(r1_last)]
            m.d.sync += [r2_gt.eq(Cat(*[r1_ok[lane] & (r1_keys[lane] > thr)
                                        for lane in range(P)])),
                         r2_eq.eq(Cat(*[r1_ok[lane] & (r1_keys[lane] == thr)
                                        for lane in range(P)]))]
        m.d.comb += eq_prefix.flags.eq(r2_eq)
        r3_gt, r3_eq = Signal(P), Signal(P)
        r3_prefix = Signal(data.ArrayLayout(range(P), P))
        r3_eqn = Signal(range(P + 1))
        with m.If(adv):
            m.d.sync += [r3_valid.eq(r2_valid), r3_keys.eq(r2_keys), r3_row.eq(r2_row),
                         r3_last.eq(r2_last), r3_gt.eq(r2_gt), r3_eq.eq(r2_eq),
                         r3_eqn.eq(eq_prefix.total)]
            m.d.sync += [r3_prefix[lane].eq(eq_prefix.prefix[lane]) for lane in range(P)]
        r4_keep = Signal(P)
        with m.If(adv):
            m.d.sync += [r4_valid.eq(r3_valid), r4_keys.eq(r3_keys), r4_row.eq(r3_row),
                         r4_last.eq(r3_last)]
            m.d.sync += [r4_keep[lane].eq(r3_gt[lane] | (r3_eq[lane]
                                                         & (r3_prefix[lane] < ties_cap)))
                         for lane in range(P)]
            with m.If(r3_valid):
                m.d.sync += count_ties(ties_left, ties_cap, r3_eqn, P)

        # ================================================================ serializer
        # A skid buffer holds each flagged row; the serializer sends its flagged keys S at a
        # time (the lowest first) through a second skid buffer into the beat packer.
        flagged = data.StructLayout({"keys": row_keys, "keep": P, "row": range(R), "last": 1})
        m.submodules.row_skid = row_skid = SkidBuffer(flagged)
        empty_go = Signal()                   # the empty packet of a row that keeps nothing
        m.d.comb += [
            row_skid.i.valid.eq(r4_valid | empty_go),
            row_skid.i.payload.keys.eq(r4_keys), row_skid.i.payload.row.eq(r4_row),
            row_skid.i.payload.keep.eq(Mux(empty_go, 0, r4_keep)),
            row_skid.i.payload.last.eq(r4_last | empty_go),
            adv.eq(~r4_valid | row_skid.i.ready),
        ]
        pl = pair_layout(cfg)
        m.submodules.ser_skid = ser_skid = SkidBuffer(row_layout(pl, S))
        m.submodules.packer = packer = BeatPacker(pl, S, zero_above_count=True)
        wiring.connect(m, ser_skid.o, packer.i)
        wiring.connect(m, packer.o, wiring.flipped(self.o))

        fr = row_skid.o.payload
        started = Signal()                    # part of the held row has been sent
        rem = Signal(P)                       # ... and these flags are still to send
        cur = Signal(P)
        m.d.comb += cur.eq(Mux(started, rem, fr.keep))
        m.submodules.ser_prefix = ser_prefix = PrefixCount(P)
        m.d.comb += ser_prefix.flags.eq(cur)
        sp = ser_prefix.prefix
        done_row = Signal()
        m.d.comb += done_row.eq(ser_prefix.total <= S)
        sv = ser_skid.i.payload
        for s in range(S):
            idx, prob = Mux(ser_prefix.total > s, Cat(Const(0, LP), fr.row), 0), 0
            for lane in range(P):
                hit = cur[lane] & (sp[lane] == s)
                idx = idx | Mux(hit, lane, 0)
                prob = prob | Mux(hit, fr.keys[lane], 0)
            m.d.comb += [sv.data[s].index.eq(idx),
                         sv.data[s].prob.eq(prob)]
        m.d.comb += [
            sv.count.eq(Mux(done_row, ser_prefix.total, S)),
            sv.last.eq(fr.last & done_row),
            ser_skid.i.valid.eq(row_skid.o.valid),
            row_skid.o.ready.eq(ser_skid.i.ready & done_row),
        ]
        with m.If(row_skid.o.valid & ser_skid.i.ready):
            m.d.sync += [started.eq(~done_row),
                         rem.eq(Cat(*[cur[lane] & (sp[lane] >= S) for lane in range(P)]))]

        # ================================================================ control
        def start_reader():
            return [rd_row.eq(0), reading.eq(1), rd_final.eq((s_n - 1) >> LP)]

        with m.If(self.o.valid & self.o.ready & self.o.payload.last):
            m.d.sync += runs_out.eq(runs_out + 1)
        m.d.comb += [
            self.busy.eq(~l_first | (runs_in != runs_out)),
            self.error_code.eq(s_err),
            self.error.eq(s_err != ErrorCode.NONE),
            self.threshold.eq(thr),
        ]
        drained = Signal()                    # the output rows of the last row have left R4
        m.d.comb += drained.eq(~r2_valid & ~r3_valid & ~r4_valid)

        with m.FSM(name="sel"):
            with m.State("IDLE"):
                # take the loaded row once its last counts are in lcnt
                with m.If(l_full & ~l1_v & ~l2_v):
                    m.d.sync += [sb.eq(lb), lb.eq(~lb), l_full.eq(0), s_n.eq(l_n),
                                 s_k.eq(l_k), hdig.eq(L - 1), pfx.eq(0), mask.eq(0),
                                 s_err.eq(Mux(l_err != ErrorCode.NONE, l_err,
                                              Mux(l_k > l_n, ErrorCode.K_OVER_N,
                                                  ErrorCode.NONE)))]
                    m.d.comb += [d_load.eq(1)] + [d_init[b].eq(lcnt[b]) for b in range(1, NB)]
                    m.next = "CHECK"

            with m.State("CHECK"):
                m.d.sync += [neg_k_rem.eq(-s_k), d0.eq(s_n - s_k)]
                with m.If(s_err != ErrorCode.NONE):
                    m.next = "EMPTY"
                with m.Elif(s_k == 0):
                    m.d.sync += pfx.eq((1 << KW) - 1)
                    m.next = "EMPTY"
                with m.Else():
                    m.next = "BIN_SELECT"

            with m.State("BIN_SELECT"):
                m.d.comb += bs_go.eq(1)
                m.d.sync += start_reader()
                with m.If(hdig == 0):
                    m.d.sync += out_pass.eq(1)
                    m.next = "OUTPUT"
                with m.Else():
                    m.d.sync += hdig.eq(hdig - 1)
                    m.next = "PASS"

            with m.State("PASS"):
                with m.If(~reading & ~m_valid & ~r1_valid):
                    # the last row is in H1: its counts are in dcnt next cycle
                    m.next = "BIN_SELECT"

            with m.State("OUTPUT"):
                with m.If(~reading & ~m_valid & ~r1_valid):
                    # every row has been compared with the threshold; the rest of the output
                    # pipeline runs on while the next row is selected
                    m.d.sync += out_pass.eq(0)
                    m.next = "IDLE"

            with m.State("EMPTY"):
                with m.If(drained):
                    m.d.comb += empty_go.eq(1)
                    with m.If(row_skid.i.ready):
                        m.next = "IDLE"

        return m
