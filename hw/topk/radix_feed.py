"""The top-k engine's digits at fixed places: its candidate filter (`FixedDigitFilter`: which
keys of a row are in the bin chosen last, and their next digit) and the feed of its zero
eliminator (`SurvivorFeed`: the candidates of a candidate pass, shifted up a digit, or the kept
keys of the output pass). A candidate pass writes its survivors back shifted left by one digit
(they all share the digit it filtered on), so every pass filters on the top digit of what it
reads and counts the second; the input pass counts the top digit: no variable digit select lies
on a critical path."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.zero_elim import check_lanes, keep_layout
from .radix import _int_param, compared_layout, flagged_layout
from .radix_writer import candidate_layout

__all__ = ["FEED_LATENCY", "FixedDigitFilter", "SurvivorFeed"]

#: `SurvivorFeed`: combinational (a row on ``candidates`` or ``kept`` is on ``o`` the same cycle).
FEED_LATENCY = 0


class FixedDigitFilter(wiring.Component):
    """The candidate filter of a pass over keys whose digits sit at fixed places: a lane
    matches when it is ok and, while ``filtering``, its top digit is ``filter_bin``; its digit to
    count is the second digit while ``filtering``, the top digit otherwise (the input pass).

    Parameters (keyword-only)
    -------------------------
    key_width : int, >= 1     bits of a key: a multiple of ``digit_bits`` (L digits); with one
                              digit every ok lane matches and its digit is the key
    digit_bits : int, 1..6    D
    lanes : int, 1..32        keys a row

    Ports
    -----
    keys, lane_ok : In        a row of keys and the lanes that hold one
    filtering, filter_bin : In   a candidate pass, and the bin its keys' top digit must equal
    match : Out(lanes)        (combinational) the lanes in the pass
    digits : Out(ArrayLayout(unsigned(D), lanes))   (combinational) each lane's digit to count

    Combinational (latency 0).
    """

    def __init__(self, *, key_width, digit_bits, lanes):
        self.key_width = _int_param("key_width", key_width, 1)
        self.digit_bits = _int_param("digit_bits", digit_bits, 1, 6)
        if key_width % digit_bits:
            raise ValueError(f"key_width must be a multiple of digit_bits ({digit_bits}), "
                             f"not {key_width}")
        self.lanes = _int_param("lanes", lanes, 1, 32)
        super().__init__({
            "keys": In(data.ArrayLayout(unsigned(key_width), lanes)),
            "lane_ok": In(lanes),
            "filtering": In(1),
            "filter_bin": In(digit_bits),
            "match": Out(lanes),
            "digits": Out(data.ArrayLayout(unsigned(digit_bits), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        KW, D = self.key_width, self.digit_bits
        for lane in range(self.lanes):
            k = self.keys[lane]
            top, second = k[KW - D:], k[KW - 2 * D:KW - D] if KW > D else k[KW - D:]
            in_bin = (top == self.filter_bin) if KW > D else Const(1)
            m.d.comb += [
                self.match[lane].eq(self.lane_ok[lane] & (~self.filtering | in_bin)),
                self.digits[lane].eq(Mux(self.filtering, second, top)),
            ]
        return m


class SurvivorFeed(wiring.Component):
    """Picks the rows the zero eliminator compacts: in a candidate pass the rows of
    ``candidates`` with their ``match`` flags, each key shifted up by one digit (the survivors
    all share the digit the pass filtered on, so the next pass finds its digits at the same
    places); in the output pass the rows of ``kept`` with their ``keep`` flags. Each key goes
    with its index, ``row * lanes + lane``.

    Parameters (keyword-only)
    -------------------------
    key_width : int, >= 1        bits of a key
    digit_bits : int, 1..6       D (a key of one digit is not shifted)
    lanes : 1, 2, 4, 8, 16 or 32  keys a row
    rows : int, >= 1             rows of a pass
    index_width : int            bits of an index (at least those of rows * lanes - 1)

    Ports
    -----
    candidates : In(stream(compared_layout(unsigned(key_width), lanes, rows)))
    kept : In(stream(flagged_layout(unsigned(key_width), lanes, rows)))
    output_pass : In(1)          take ``kept`` (else ``candidates``)
    o : Out(stream(keep_layout(candidate_layout(unsigned(key_width), index_width), lanes)))

    Both inputs' ``ready`` is ``~o.valid | o.ready``: the pass pipeline behind them moves as a
    whole whenever ``o`` holds nothing or is taken. Latency `FEED_LATENCY` (combinational).
    """

    def __init__(self, *, key_width, digit_bits, lanes, rows, index_width):
        self.key_width = _int_param("key_width", key_width, 1)
        self.digit_bits = _int_param("digit_bits", digit_bits, 1, 6)
        self.lanes = check_lanes(lanes)
        self.rows = _int_param("rows", rows, 1)
        self.index_width = _int_param("index_width", index_width,
                                      max(1, (rows * lanes - 1).bit_length()))
        key = unsigned(key_width)
        super().__init__({
            "candidates": In(stream.Signature(compared_layout(key, lanes, rows))),
            "kept": In(stream.Signature(flagged_layout(key, lanes, rows))),
            "output_pass": In(1),
            "o": Out(stream.Signature(keep_layout(candidate_layout(key, index_width), lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        KW, D = self.key_width, self.digit_bits
        out, cand, kept, o = self.output_pass, self.candidates.payload, self.kept.payload, \
            self.o.payload

        def shifted(k):
            return Cat(Const(0, D), k[:KW - D]) if KW > D else k

        for lane in range(self.lanes):
            m.d.comb += [
                o.data[lane].key.eq(Mux(out, kept.keys[lane], shifted(cand.keys[lane]))),
                o.data[lane].index.eq(Cat(Const(lane, (self.lanes - 1).bit_length()),
                                          Mux(out, kept.row, cand.row))),
            ]
        valid = Mux(out, self.kept.valid, self.candidates.valid)
        advance = ~valid | self.o.ready
        m.d.comb += [o.keep.eq(Mux(out, kept.keep, cand.match)),
                     o.last.eq(Mux(out, kept.last, cand.last)), self.o.valid.eq(valid),
                     self.candidates.ready.eq(advance), self.kept.ready.eq(advance)]
        return m
