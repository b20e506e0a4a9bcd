"""The streaming fixed-point softmax: one row of dots in, one row of U0.16 probabilities out,
bit for bit `golden.attention.softmax` (formats: `spatten.config.AttentionConfig`).

Contract
--------
Input ``i`` (stream, `dots_layout`): one row (one query) of n = 1..capacity dots, S =
``softmax_lanes`` per beat, ``data[0..count-1]`` valid, every beat full except the last
(``last = 1``, count 1..S). ``shift`` (0..dot_width), ``scale`` (U`scale_bits`) and
``post_shift`` (0..31) are sampled with each row's first beat and kept with that row.

Output ``o`` (stream, `probs_layout`): the row's n probabilities p in the same beat structure
(lanes at and above ``count`` read 0). Output ``row`` (stream, `row_info_layout`): one beat per row,
``{p_max, esum, n, max, error}`` (p_max: the probability of the row maximum; esum: the sum of
the U1.16 exponentials; max: the largest dot). It is offered before the row's first ``o`` beat
and may be taken at any time; the next row's ``o`` beats wait until it is taken.

Errors: a row of more than ``capacity`` dots, or a beat with count 0, count > S, or a partial
beat that is not the last: the row is read up to its ``last`` beat, its ``row`` beat has
``error = 1`` (and p_max, esum, n, max = 0) and its ``o`` packet is one beat with count 0,
last 1. The next row is processed normally.

Timing (unstalled; R = log2 S, B = ceil(n/S) beats, 1 for an error row, Bi = input beats)
-----------------------------------------------------------------------------------------
A row passes four phases, each with its own resources, so rows overlap:
ingest (two score banks used in turn, the row maximum tracked per lane, then an R-level tree),
exp (one read a cycle from a score bank, 12 pipeline stages: subtract, shift, saturate,
multiply, round, the 2**-frac ROM, the rounding shift; e written to one of two e banks, esum by
an R-level adder tree), reciprocal (22 cycles: normalise esum, 19-step restoring division,
rounding) and normalise (one read a cycle, 4 stages, an 8-entry output FIFO fed on credit, so
that ``o.ready`` reaches only the FIFO). Each pair of banks is one block-RAM memory (the bank is
the top address bit); every memory and ROM output and every multiplier input and output is a
register. ECP5-85F (speed grade 6), default config, alone in the synthesis harness: 123 MHz,
8 DP16KD, 8 MULT18X18D, 3.4k LUT4, 4.1k FF (harness registers included).

- Latency of a row entering an idle unit, from its first input beat to its last output beat
  (inclusive): ``Bi + 2 B + 44 + 2 R`` cycles (``3 B + 48`` at S = 4).
- Back-to-back rows of B beats: one row every ``max(B + 18 + R/2, 22)`` cycles on average
  (``B + 19`` at S = 4): the two e banks alternate, each held from the row's exp pass through its
  reciprocal to the end of its normalise pass.

`golden.softmax_cycles.softmax_cycle_model` gives the exact cycle of every event for a sequence
of rows; the tests compare it with this RTL.
"""

from __future__ import annotations

from amaranth import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from ..common.recip import Reciprocal
from .softmax_banks import EBankRing
from .softmax_common import (
    E_BANKS,
    bank_depth,
    check_config,
    dots_layout,
    probs_layout,
    row_info_layout,
)
from .softmax_exp import ExpPipeline, ExpReader, e_port_shape, exp_rom
from .softmax_ingest import ScoreIngest
from .softmax_norm import NormalisePass, RowOutput

__all__ = ["Softmax", "dots_layout", "probs_layout", "row_info_layout"]


class Softmax(wiring.Component):
    """The streaming softmax; see the module docstring for the contract.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
        Formats and sizes: dot_width, softmax_lanes S, capacity, the score-scaling widths.

    Ports
    -----
    i : In(stream.Signature(dots_layout(config)))
    shift : In(range(dot_width + 1)); scale : In(unsigned(scale_bits));
    post_shift : In(range(post_shift_max + 1))
    o : Out(stream.Signature(probs_layout(config)))
    row : Out(stream.Signature(row_info_layout(config)))

    Structure: `ScoreIngest` -> the score memory -> `ExpReader` + `ExpPipeline` -> the e memory
    -> `NormalisePass` (with its `RowOutput`), `EBankRing` keeping the e banks' rows and the
    shared `Reciprocal` of each row's esum. The latencies between them are
    those of the config (``softmax_*_latency``, ``softmax_recip_cycles``, ``softmax_row_gap``),
    checked here against the sub-units' structure.
    """

    #: depth of the output FIFO (and of the normalise pass's credit)
    OUT_DEPTH = NormalisePass.OUT_DEPTH
    #: e banks used in turn (the score banks are two)
    E_BANKS = E_BANKS

    def __init__(self, *, config: AttentionConfig):
        self.cfg = cfg = check_config(config)
        super().__init__({
            "i": In(stream.Signature(dots_layout(cfg))),
            "shift": In(range(cfg.dot_width + 1)),
            "scale": In(unsigned(cfg.scale_bits)),
            "post_shift": In(range(cfg.post_shift_max + 1)),
            "o": Out(stream.Signature(probs_layout(cfg))),
            "row": Out(stream.Signature(row_info_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        S, depth = cfg.softmax_lanes, bank_depth(cfg)

        # Each pair of banks is one memory, the bank number its top address bit: no read
        # multiplexer between the block RAM (slow clock-to-out) and the register it feeds.
        m.submodules.scores = scores = Memory(
            shape=data.ArrayLayout(signed(cfg.dot_width), S), depth=2 * depth, init=[])
        m.submodules.ebanks = e_memory = Memory(shape=e_port_shape(cfg), depth=E_BANKS * depth,
                                                init=[])
        m.submodules.exp_rom = rom = exp_rom(cfg)

        m.submodules.ingest = ingest = ScoreIngest(config=cfg)
        m.submodules.exp_reader = reader = ExpReader(config=cfg)
        m.submodules.exp = exp = ExpPipeline(config=cfg)
        m.submodules.e_banks = banks = EBankRing(config=cfg)
        # esum >= 2**16 for a good row (the maximum's e is 2**16), 0 for an error row
        m.submodules.reciprocal = recip = Reciprocal(
            value_width=cfg.esum_width, divisor_bits=cfg.e_width, normalise_up=False,
            saturate=True)
        m.submodules.normalise = norm = NormalisePass(config=cfg)

        # latencies of the cycle model (config), given by the sub-units' structure: + 1 for
        # the e banks' state register between two phases
        assert ingest.latency == cfg.softmax_ingest_latency
        assert exp.sum_latency + 1 == cfg.softmax_exp_latency
        assert recip.latency + 1 == cfg.softmax_recip_cycles
        assert norm.latency == cfg.softmax_out_latency
        assert RowOutput.latency + 1 == cfg.softmax_row_gap

        wiring.connect(m, wiring.flipped(self.i), ingest.i)
        m.d.comb += [ingest.shift.eq(self.shift), ingest.scale.eq(self.scale),
                     ingest.post_shift.eq(self.post_shift)]
        wiring.connect(m, ingest.score_write, scores.write_port())
        wiring.connect(m, ingest.rows, reader.rows)
        m.d.comb += [ingest.release.eq(reader.release),
                     ingest.release_bank.eq(reader.release_bank)]

        wiring.connect(m, reader.claim, banks.claim)
        m.d.comb += reader.claim_bank.eq(banks.claim_bank)
        score_read = scores.read_port()
        m.d.comb += [score_read.addr.eq(reader.score_read.addr), exp.dots.eq(score_read.data),
                     exp.reads.eq(reader.reads), banks.summed.eq(exp.summed)]
        wiring.connect(m, exp.e_write, e_memory.write_port())
        for lane in range(S):
            rom_read = rom.read_port()
            m.d.comb += [rom_read.addr.eq(exp.rom_addr[lane]), exp.rom_data[lane].eq(rom_read.data)]

        wiring.connect(m, banks.sums, recip.i)
        m.d.comb += [banks.reciprocals.valid.eq(recip.o.valid),
                     banks.reciprocals.payload.recip.eq(recip.o.payload.recip),
                     banks.reciprocals.payload.norm.eq(recip.o.payload.exponent),
                     recip.o.ready.eq(banks.reciprocals.ready)]

        wiring.connect(m, banks.rows, norm.rows)
        m.d.comb += [banks.release.eq(norm.release), banks.release_bank.eq(norm.release_bank)]
        e_read = e_memory.read_port()
        m.d.comb += [e_read.addr.eq(norm.e_read.addr), norm.e_read.data.eq(e_read.data)]
        wiring.connect(m, norm.o, wiring.flipped(self.o))
        wiring.connect(m, norm.row, wiring.flipped(self.row))
        return m
