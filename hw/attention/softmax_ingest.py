"""The softmax's ingest: rows of dots into two score banks, used in turn, each row's maximum
and its checks, then the row offered to the exp pass."""

from __future__ import annotations

import math

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from .softmax_common import (
    bank_address,
    bank_depth,
    check_config,
    dots_layout,
    score_params_layout,
    score_row_layout,
)

__all__ = ["ScoreIngest"]


class ScoreIngest(wiring.Component):
    """Rows of dots into the two score banks; each complete row offered on ``rows``.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig

    Ports
    -----
    i : In(stream.Signature(dots_layout(config)))
        Rows of dots, as the softmax's ``i`` (see `hw.attention.softmax`).
    shift, scale, post_shift : In
        The score-scaling registers, sampled with each row's first beat.
    score_write : In(WritePort.Signature(...))
        Write port of the score memory (two banks of capacity / S beats): beat k of a row into
        bank b, address b * depth + k; a row's beats beyond the capacity are not written.
    rows : Out(stream.Signature(score_row_layout(config)))
        One descriptor per row, in order: its bank, error flag, n, beats, last_count, maximum
        dot and registers. An error row (more than ``capacity`` dots, a beat with count 0 or
        above S, a partial beat that is not the last) has error = 1, n = 0, beats = 1,
        last_count = 0, max = 0.
    release : In(1); release_bank : In(1)
        The reader is done with the bank ``release_bank``: it takes the next row.

    Contract: a bank takes a row only when released since its previous row; ``i.ready`` is low
    while the bank for the next row is full. The descriptor of a row whose last beat is accepted
    in cycle t is offered from t + `latency` (= 3 + log2 S: the accepted beat, the descriptor,
    log2 S levels of the maximum tree, the bank's ready flag), held until taken.
    """

    def __init__(self, *, config):
        self.cfg = cfg = check_config(config)
        self.depth = bank_depth(cfg)
        self.levels = int(math.log2(cfg.softmax_lanes))
        super().__init__({
            "i": In(stream.Signature(dots_layout(cfg))),
            "shift": In(range(cfg.dot_width + 1)),
            "scale": In(unsigned(cfg.scale_bits)),
            "post_shift": In(range(cfg.post_shift_max + 1)),
            "score_write": In(WritePort.Signature(
                addr_width=(2 * self.depth - 1).bit_length(),
                shape=data.ArrayLayout(signed(cfg.dot_width), cfg.softmax_lanes))),
            "rows": Out(stream.Signature(score_row_layout(cfg))),
            "release": In(1),
            "release_bank": In(1),
        })

    @property
    def latency(self) -> int:
        """Cycles from a row's last input beat to its descriptor on ``rows``."""
        return 3 + self.levels

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        S, DW, depth = cfg.softmax_lanes, cfg.dot_width, self.depth
        lowest_dot = -(1 << (DW - 1))

        in_bank = Signal(name="in_bank")
        in_first = Signal(name="in_first", init=1)
        bank_full = [Signal(name=f"s_full{j}") for j in range(2)]
        bank_ready = [Signal(name=f"s_ready{j}") for j in range(2)]
        params = Signal(score_params_layout(cfg), name="cur")
        m.d.comb += self.i.ready.eq(~Mux(in_bank, bank_full[1], bank_full[0]))
        accept = self.i.valid & self.i.ready

        # the accepted beat, one cycle later
        beat = Signal(dots_layout(cfg), name="b")
        beat_valid, beat_first, beat_bank = Signal(name="b_v"), Signal(name="b_first"), \
            Signal(name="b_bank")
        m.d.sync += beat_valid.eq(accept)
        with m.If(accept):
            m.d.sync += [beat.eq(self.i.payload), beat_first.eq(in_first),
                         beat_bank.eq(in_bank), in_first.eq(self.i.payload.last)]
            with m.If(in_first):
                m.d.sync += [params.shift.eq(self.shift), params.scale.eq(self.scale),
                             params.post_shift.eq(self.post_shift)]
            with m.If(self.i.payload.last):
                m.d.sync += in_bank.eq(~in_bank)
                for j in range(2):
                    with m.If(in_bank == j):
                        m.d.sync += bank_full[j].eq(1)

        # the beat's checks; into the bank
        index = Signal(range(depth + 1), name="in_idx")      # beat index of the beat in its row
        row_error = Signal(name="in_err")
        count = beat.count
        over = index == depth
        bad = (count == 0) | (count > S) | (~beat.last & (count != S)) | over
        error_now = bad | row_error
        m.d.comb += [self.score_write.addr.eq(bank_address(beat_bank, index, depth)),
                     self.score_write.data.eq(beat.data),
                     self.score_write.en.eq(beat_valid & ~over)]
        with m.If(beat_valid):
            with m.If(beat.last):
                m.d.sync += [index.eq(0), row_error.eq(0)]
            with m.Else():
                m.d.sync += [index.eq(Mux(over, index, index + 1)), row_error.eq(error_now)]

        # running maximum per lane, then a registered tree
        lane_max = [Signal(signed(DW), name=f"lane_max{lane}") for lane in range(S)]
        with m.If(beat_valid):
            for lane in range(S):
                ok = count > lane
                with m.If(beat_first):
                    m.d.sync += lane_max[lane].eq(Mux(ok, beat.data[lane], lowest_dot))
                with m.Elif(ok & (beat.data[lane] > lane_max[lane])):
                    m.d.sync += lane_max[lane].eq(beat.data[lane])
        level = lane_max
        for k in range(self.levels):
            wider = []
            for x in range(len(level) // 2):
                a, c = level[2 * x], level[2 * x + 1]
                r = Signal(signed(DW), name=f"max_l{k + 1}_{x}")
                m.d.sync += r.eq(Mux(a > c, a, c))
                wider.append(r)
            level = wider
        row_max = level[0]

        # the row's descriptor, delayed to meet the tree's output
        row = self.rows.payload.shape()
        desc_layout = data.StructLayout({"valid": 1, **{name: f.shape for name, f in row
                                                        if name != "max"}})
        desc = Signal(desc_layout, name="desc0")
        m.d.sync += desc.valid.eq(beat_valid & beat.last)
        with m.If(beat_valid & beat.last):
            m.d.sync += [desc.bank.eq(beat_bank), desc.error.eq(error_now),
                         desc.n.eq(Mux(error_now, 0, index * S + count)),
                         desc.beats.eq(Mux(error_now, 1, index + 1)),
                         desc.last_count.eq(Mux(error_now, 0, count)),
                         desc.shift.eq(params.shift), desc.scale.eq(params.scale),
                         desc.post_shift.eq(params.post_shift)]
        for k in range(self.levels):
            later = Signal(desc_layout, name=f"desc{k + 1}")
            m.d.sync += later.eq(desc)
            desc = later
        # registers from a row's last beat to its ready flag: the beat, the descriptors, the flag
        assert 1 + 1 + self.levels + 1 == self.latency

        # the banks' descriptors; the reader takes them in turn
        stored = [Signal(row, name=f"s{j}") for j in range(2)]
        for j in range(2):
            with m.If(desc.valid & (desc.bank == j)):
                m.d.sync += bank_ready[j].eq(1)
                m.d.sync += [getattr(stored[j], name).eq(getattr(desc, name))
                             for name, _ in row if name not in ("max", "bank")]
                m.d.sync += stored[j].max.eq(Mux(desc.error, 0, row_max))
        read_bank = Signal(name="x_sptr")
        m.d.comb += [self.rows.valid.eq(Mux(read_bank, bank_ready[1], bank_ready[0])),
                     self.rows.payload.eq(Mux(read_bank, stored[1], stored[0])),
                     self.rows.payload.bank.eq(read_bank)]
        with m.If(self.rows.valid & self.rows.ready):
            m.d.sync += read_bank.eq(~read_bank)
            for j in range(2):
                with m.If(read_bank == j):
                    m.d.sync += bank_ready[j].eq(0)
        with m.If(self.release):
            for j in range(2):
                with m.If(self.release_bank == j):
                    m.d.sync += bank_full[j].eq(0)
        return m
