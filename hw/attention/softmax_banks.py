"""The softmax's e banks: which phase each bank is in, and what is known about its row.

Rows take the e banks in turn and every phase handles rows in order, so each phase keeps a
pointer to the bank of its next row, and a bank's state says whether that phase may have it.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, Value
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .softmax_common import E_BANKS, bank_row_layout, check_config, e_row_layout

__all__ = ["EBankRing", "EBankState"]


class EBankState(enum.Enum, shape=3):
    """The phase of an e bank's row."""

    FREE = 0          #: no row; the exp pass may claim it
    EXP = 1           #: the exp pass is writing the row's exponentials
    SUMMED = 2        #: esum is known; waiting for (or in) the reciprocal
    READY = 3         #: the reciprocal is known; waiting for the normalise pass
    NORMALISE = 4     #: the normalise pass is reading the row


def _pick(values: list, index):
    """values[index] (a multiplexer; values of one shape)."""
    if len(values) == 1:
        return values[0]
    picked = Array(Value.cast(v) for v in values)[index]
    if isinstance(values[0], data.View):
        return data.View(values[0].shape(), picked)
    return picked


class EBankRing(wiring.Component):
    """The bookkeeping of the softmax's e banks (`E_BANKS` of them, taken in turn).

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig

    Ports
    -----
    claim : In(stream.Signature(e_row_layout(config)))
        The exp pass claims the next bank for a row (ready while that bank is free).
    claim_bank : Out(range(E_BANKS))
        The bank the next claim gets.
    summed : In(data.StructLayout({"valid": 1, "bank": range(E_BANKS), "esum": ...}))
        The exp pass has written bank ``bank``'s row, whose exponentials sum to ``esum``.
    sums : Out(stream.Signature(unsigned(esum_width)))
        The esum of the rows in turn, for the reciprocal, which takes one at a time: a sum's
        result comes back on ``reciprocals`` before the next sum is taken.
    reciprocals : In(stream.Signature(StructLayout({"recip", "norm"})))
        The reciprocal of each row's esum and its exponent, in turn (always taken).
    rows : Out(stream.Signature(bank_row_layout(config)))
        The rows in turn, once their reciprocal is known, for the normalise pass.
    release : In(1); release_bank : In(range(E_BANKS))
        The normalise pass is done with bank ``release_bank``: it is free.

    Contract: every port acts in the cycle of its transfer (``claim``, ``sums``,
    ``reciprocals``, ``rows``) or strobe (``summed``, ``release``); a bank's state and row
    change at the end of that cycle, so ``claim.ready``, ``sums.valid`` and ``rows.valid`` follow
    one cycle later. Every ``valid`` and ``ready`` comes from registers.
    """

    def __init__(self, *, config):
        self.cfg = cfg = check_config(config)
        row = bank_row_layout(cfg)
        super().__init__({
            "claim": In(stream.Signature(e_row_layout(cfg))),
            "claim_bank": Out(range(E_BANKS)),
            "summed": In(data.StructLayout({"valid": 1, "bank": range(E_BANKS),
                                            "esum": row["esum"].shape})),
            "sums": Out(stream.Signature(row["esum"].shape)),
            "reciprocals": In(stream.Signature(data.StructLayout({
                "recip": row["recip"].shape, "norm": row["norm"].shape}))),
            "rows": Out(stream.Signature(row)),
            "release": In(1),
            "release_bank": In(range(E_BANKS)),
        })

    def elaborate(self, platform):
        m = Module()
        row = self.rows.payload.shape()
        state = [Signal(EBankState, name=f"e_state{j}") for j in range(E_BANKS)]
        stored = [Signal(row, name=f"e{j}") for j in range(E_BANKS)]
        exp_bank = Signal(range(E_BANKS), name="xw")          # the exp pass's next bank
        recip_bank = Signal(range(E_BANKS), name="rc_ptr")    # the reciprocal's next esum
        result_bank = Signal(range(E_BANKS), name="rc_bank")  # ... and its next result
        norm_bank = Signal(range(E_BANKS), name="n_ptr")      # the normalise pass's next row

        def next_bank(bank):
            return Mux(bank == E_BANKS - 1, 0, bank + 1)

        claim = self.claim.valid & self.claim.ready
        m.d.comb += [self.claim_bank.eq(exp_bank),
                     self.claim.ready.eq(_pick(state, exp_bank) == EBankState.FREE),
                     self.sums.valid.eq(_pick(state, recip_bank) == EBankState.SUMMED),
                     self.sums.payload.eq(_pick([s.esum for s in stored], recip_bank)),
                     self.reciprocals.ready.eq(1),
                     self.rows.valid.eq(_pick(state, norm_bank) == EBankState.READY),
                     self.rows.payload.eq(_pick(stored, norm_bank)),
                     self.rows.payload.bank.eq(norm_bank)]
        with m.If(claim):
            m.d.sync += exp_bank.eq(next_bank(exp_bank))
        with m.If(self.sums.valid & self.sums.ready):
            m.d.sync += [result_bank.eq(recip_bank), recip_bank.eq(next_bank(recip_bank))]
        with m.If(self.rows.valid & self.rows.ready):
            m.d.sync += norm_bank.eq(next_bank(norm_bank))

        for j, (bank_state, bank_row) in enumerate(zip(state, stored, strict=True)):
            # in phase order: claimed, summed, reciprocal known, taken, released
            with m.If(claim & (exp_bank == j)):
                m.d.sync += bank_state.eq(EBankState.EXP)
                m.d.sync += [getattr(bank_row, name).eq(getattr(self.claim.payload, name))
                             for name, _ in self.claim.payload.shape()]
            with m.If(self.summed.valid & (self.summed.bank == j)):
                m.d.sync += [bank_row.esum.eq(self.summed.esum),
                             bank_state.eq(EBankState.SUMMED)]
            with m.If(self.reciprocals.valid & (result_bank == j)):
                m.d.sync += [bank_row.recip.eq(self.reciprocals.payload.recip),
                             bank_row.norm.eq(self.reciprocals.payload.norm),
                             bank_state.eq(EBankState.READY)]
            with m.If(self.rows.valid & self.rows.ready & (norm_bank == j)):
                m.d.sync += bank_state.eq(EBankState.NORMALISE)
            with m.If(self.release & (self.release_bank == j)):
                m.d.sync += bank_state.eq(EBankState.FREE)
        return m
