"""Local value pruning's selector: the ``k`` largest probabilities of each row, kept in index order.

The query pipeline's top-k stage (`hw/attention/attention.py`). It selects what the top-k engine's
exact mode selects (`golden.attention.value_select`: the ``k`` largest, of the values equal to the
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
error, error_code : Out(1), Out(RunError)
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

The blocks are components: `RunIntake`, `DigitHistogram` (twice: the loader's top digit, S
keys a cycle, and the passes', P a cycle), `RowReader`, `BinSelect`, `ThresholdCompare` and
`TieBreaker` of the radix-select core (`hw/topk/radix.py`), the `KeptSerializer`
(`hw/topk/radix_serializer.py`) and the beat packer; this unit wires them and runs the passes
(`Phase`).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from ..common.packer import BeatPacker
from ..common.rowstream import row_layout
from ..common.skid import SkidBuffer
from ..topk.radix import (
    BinSelect,
    DigitHistogram,
    RowReader,
    RunError,
    RunIntake,
    ThresholdCompare,
    TieBreaker,
    buffer_address,
    flagged_layout,
)
from ..topk.radix_serializer import KeptSerializer

__all__ = ["ValueSelect", "Phase", "pair_layout"]


def pair_layout(cfg: AttentionConfig) -> data.StructLayout:
    """One kept key: its index in the row and its probability."""
    return data.StructLayout({"index": unsigned(cfg.index_width),
                              "prob": unsigned(cfg.prob_bits)})


class Phase(enum.Enum, shape=3):
    """The selector's control states (the loader runs on its own)."""
    IDLE = 0          # waiting for a loaded row (and its top digit's counts)
    CHECK = 1         # the row's error, k = 0
    BIN_SELECT = 2    # pick the bin (committed next cycle) and start the next pass
    PASS = 3          # a candidate pass reads
    OUTPUT = 4        # the output pass reads (its rows go on while the next row is taken)
    EMPTY = 5         # the empty packet of a row that keeps nothing


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
            "error_code": Out(RunError),
            "threshold": Out(cfg.prob_bits),
        })

    def elaborate(self, platform):
        cfg = self.config
        S, P, D, KW, N = (cfg.softmax_lanes, cfg.topk_lanes, cfg.topk_digit_bits,
                          cfg.prob_bits, cfg.capacity)
        L = -(-KW // D)                       # digits
        KP = L * D                            # key width padded to whole digits
        R = N // P                            # A rows of one bank
        G = P // S                            # input beats per A row
        group_bits = (G - 1).bit_length()
        row_bits = max(1, (R - 1).bit_length())
        key = unsigned(KW)
        m = Module()

        # buffer A: two banks of R rows of P keys, written S keys at a time
        m.submodules.mem = mem = Memory(shape=data.ArrayLayout(key, P), depth=2 << row_bits,
                                        init=[])
        wp, rp = mem.write_port(granularity=S), mem.read_port()

        def padded(k):
            return Cat(k, Const(0, KP - KW)) if KP > KW else k.as_unsigned()

        # ---- loader: takes a row into bank `load_bank` and counts its top digit (from -k);
        # holds it (`row_waiting`) until the selector takes it, then loads the other bank
        m.submodules.intake = intake = RunIntake(lanes=S, beats=R * G, capacity=N,
                                                 params=range(N + 1))    # k
        m.submodules.top_histogram = top_hist = DigitHistogram(lanes=S, digit_bits=D,
                                                               capacity=N, restarts=True)
        row_waiting = Signal()
        load_bank = Signal()
        load_k = intake.params                # k of the row loaded last
        rows_in = Signal(8)                   # rows whose last beat was taken
        rows_out = Signal(8)                  # packets whose last beat was sent
        beat = self.i.payload
        take = Signal()
        m.d.comb += [self.i.ready.eq(~row_waiting), take.eq(self.i.valid & ~row_waiting),
                     intake.take.eq(take), intake.count.eq(beat.count),
                     intake.last.eq(beat.last), intake.params_in.eq(self.k)]
        m.d.comb += [
            wp.addr.eq(buffer_address(intake.beat >> group_bits, row_bits, load_bank)),
            wp.en.eq(Mux(take & intake.store, 1 << (intake.beat[:group_bits] if G > 1 else 0),
                         0)),
        ]
        m.d.comb += [wp.data[g * S + j].eq(beat.data[j]) for g in range(G) for j in range(S)]
        with m.If(take & beat.last):
            m.d.sync += [row_waiting.eq(1), rows_in.eq(rows_in + 1)]
        # L1 registers the beat's keys; the histogram counts their top digits
        l1_valid, l1_first = Signal(), Signal()
        l1_keys = [Signal(KW, name=f"l1_key{j}") for j in range(S)]
        l1_ok = Signal(S)
        m.d.sync += [l1_valid.eq(take), l1_first.eq(take & intake.first)]
        with m.If(take):
            m.d.sync += [l1_keys[j].eq(beat.data[j]) for j in range(S)]
            m.d.sync += l1_ok.eq(Cat(*[beat.count > j for j in range(S)]))
        m.d.comb += [top_hist.i.valid.eq(l1_valid), top_hist.i.payload.restart.eq(l1_first),
                     top_hist.i.payload.flags.eq(l1_ok)]
        m.d.comb += [top_hist.i.payload.digits[j].eq(padded(l1_keys[j])[(L - 1) * D:])
                     for j in range(S)]
        m.d.comb += [top_hist.init[j].eq(-load_k) for j in range((1 << D) - 1)]

        # ---- selector: reader, histogram of the pass's digit, bin select
        m.submodules.reader = reader = RowReader(key_shape=key, lanes=P, rows=R, capacity=N)
        m.submodules.histogram = hist = DigitHistogram(lanes=P, digit_bits=D, capacity=N)
        m.submodules.bin_select = bins = BinSelect(digit_bits=D, capacity=N, digits=L)
        select_bank = Signal()                # the bank the selector reads
        take_row = Signal()                   # the selector takes the loaded row
        row_error = Signal(RunError)
        k_zero = Signal()
        hist_digit = Signal(range(max(L, 2)))  # the digit the current pass counts
        chosen = Signal(KP)                   # the digits chosen so far, at their places
        chosen_mask = Signal(KP)              # ... and which digits they are
        out_pass = Signal()
        advance = Signal()                    # the pass pipeline moves this cycle
        m.d.comb += [rp.addr.eq(buffer_address(reader.addr, row_bits, select_bank)),
                     rp.en.eq(reader.read_en), reader.read_data.eq(rp.data),
                     reader.o.ready.eq(advance), reader.load.eq(take_row),
                     reader.elems.eq(intake.n)]
        # a pass counts the keys whose digits above `hist_digit` are the chosen ones
        r1 = reader.o.payload
        match = Signal(P)
        for lane in range(P):
            k = padded(r1.keys[lane])
            m.d.comb += [match[lane].eq(r1.lane_ok[lane] & (((k ^ chosen) & chosen_mask) == 0)),
                         hist.i.payload.digits[lane].eq(k.word_select(hist_digit, D))]
        m.d.comb += [hist.i.valid.eq(reader.o.valid & advance & ~out_pass),
                     hist.i.payload.flags.eq(match), hist.load.eq(take_row | bins.valid)]
        m.d.comb += [hist.init[j].eq(Mux(take_row, top_hist.counts[j], bins.base))
                     for j in range((1 << D) - 1)]
        m.d.comb += [bins.above.eq(hist.counts), bins.start.eq(take_row), bins.n.eq(intake.n),
                     bins.k.eq(load_k), bins.digit.eq(hist_digit)]
        # the commit puts the bin in its place; the last digit's sets the ties (during the
        # earlier ones the output rows of the row before may still be in the tie breaker)
        with m.If(bins.valid):
            for h in range(L):
                with m.If(bins.bin_digit == h):
                    m.d.sync += [chosen[h * D:(h + 1) * D].eq(bins.bin),
                                 chosen_mask[h * D:(h + 1) * D].eq((1 << D) - 1)]

        # ---- output pass: compare, ties, then a skid buffer holds each flagged row while the
        # serializer sends its kept keys S at a time into the beat packer
        m.submodules.compare = compare = ThresholdCompare(key_shape=key, lanes=P, rows=R)
        m.submodules.tie_breaker = tie_breaker = TieBreaker(key_shape=key, lanes=P, rows=R,
                                                            capacity=N)
        threshold = chosen[:KW]
        compared = compare.i.payload
        m.d.comb += [
            compare.i.valid.eq(reader.o.valid & out_pass), compared.keys.eq(r1.keys),
            compared.lane_ok.eq(r1.lane_ok), compared.row.eq(r1.row), compared.last.eq(r1.last),
            compare.threshold.eq(threshold),
            tie_breaker.ties_set.eq(bins.valid & (bins.bin_digit == 0)),
            tie_breaker.ties.eq(bins.to_find),
        ]
        wiring.connect(m, compare.o, tie_breaker.i)
        m.submodules.row_skid = row_skid = SkidBuffer(flagged_layout(key, P, R))
        empty_go = Signal()                   # the empty packet of a row that keeps nothing
        flagged = tie_breaker.o.payload
        m.d.comb += [
            row_skid.i.valid.eq(tie_breaker.o.valid | empty_go),
            row_skid.i.payload.keys.eq(flagged.keys), row_skid.i.payload.row.eq(flagged.row),
            row_skid.i.payload.keep.eq(Mux(empty_go, 0, flagged.keep)),
            row_skid.i.payload.last.eq(flagged.last | empty_go),
            advance.eq(~tie_breaker.o.valid | row_skid.i.ready), tie_breaker.o.ready.eq(advance),
        ]
        m.submodules.serializer = serializer = KeptSerializer(
            key_shape=key, lanes=P, out_lanes=S, rows=R, index_width=cfg.index_width)
        m.submodules.ser_skid = ser_skid = SkidBuffer(row_layout(pair_layout(cfg), S))
        m.submodules.packer = packer = BeatPacker(pair_layout(cfg), S, zero_above_count=True)
        wiring.connect(m, row_skid.o, serializer.i)
        m.d.comb += [ser_skid.i.payload.eq(serializer.o.payload),   # (index, key) as (index, prob)
                     ser_skid.i.valid.eq(serializer.o.valid),
                     serializer.o.ready.eq(ser_skid.i.ready)]
        wiring.connect(m, ser_skid.o, packer.i)
        wiring.connect(m, packer.o, wiring.flipped(self.o))

        # ---- status and control
        with m.If(self.o.valid & self.o.ready & self.o.payload.last):
            m.d.sync += rows_out.eq(rows_out + 1)
        m.d.comb += [
            self.busy.eq(~intake.first | (rows_in != rows_out)),
            self.error_code.eq(row_error),
            self.error.eq(row_error != RunError.NONE),
            self.threshold.eq(threshold),
        ]
        phase = Signal(Phase)
        with m.Switch(phase):
            with m.Case(Phase.IDLE):
                # take the loaded row once its last counts are in
                with m.If(row_waiting & ~l1_valid & ~top_hist.busy):
                    m.d.comb += take_row.eq(1)
                    m.d.sync += [
                        select_bank.eq(load_bank), load_bank.eq(~load_bank),
                        row_waiting.eq(0), k_zero.eq(load_k == 0), hist_digit.eq(L - 1),
                        chosen.eq(0), chosen_mask.eq(0), phase.eq(Phase.CHECK),
                        row_error.eq(Mux(intake.error != RunError.NONE, intake.error,
                                         Mux(load_k > intake.n, RunError.K_OVER_N,
                                             RunError.NONE))),
                    ]

            with m.Case(Phase.CHECK):
                with m.If(row_error != RunError.NONE):
                    m.d.sync += phase.eq(Phase.EMPTY)
                with m.Elif(k_zero):
                    m.d.sync += [chosen.eq((1 << KW) - 1), phase.eq(Phase.EMPTY)]
                with m.Else():
                    m.d.sync += phase.eq(Phase.BIN_SELECT)

            with m.Case(Phase.BIN_SELECT):
                m.d.comb += [bins.go.eq(1), reader.start.eq(1)]
                with m.If(hist_digit == 0):
                    m.d.sync += [out_pass.eq(1), phase.eq(Phase.OUTPUT)]
                with m.Else():
                    m.d.sync += [hist_digit.eq(hist_digit - 1), phase.eq(Phase.PASS)]

            with m.Case(Phase.PASS):
                with m.If(~reader.busy):
                    # the last row's flags are in the histogram: its counts are in next cycle
                    m.d.sync += phase.eq(Phase.BIN_SELECT)

            with m.Case(Phase.OUTPUT):
                with m.If(~reader.busy):
                    # every row has been compared with the threshold; the rest of the output
                    # pipeline runs on while the next row is selected
                    m.d.sync += [out_pass.eq(0), phase.eq(Phase.IDLE)]

            with m.Case(Phase.EMPTY):
                # once the output rows of the row before have left the tie breaker
                with m.If(~compare.o.valid & ~tie_breaker.busy):
                    m.d.comb += empty_go.eq(1)
                    with m.If(row_skid.i.ready):
                        m.d.sync += phase.eq(Phase.IDLE)

        return m
