"""Layouts and helpers shared by the streaming softmax (`hw/attention/softmax.py`) and its sub-units
(`hw/attention/softmax_ingest.py`, `hw/attention/softmax_exp.py`, `hw/attention/softmax_banks.py`,
`hw/attention/softmax_norm.py`).

A row passes through two kinds of bank: a *score bank* holds its dots from ingest until the
exp pass has read them; an *e bank* holds its exponentials from the exp pass until the
normalise pass has read them. Each pair of banks is one memory whose top address bit is the
bank (`bank_address`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Signal, signed, unsigned
from amaranth.lib import data

from spatten.config import AttentionConfig

from ..common.rowstream import row_layout

__all__ = ["E_BANKS", "bank_depth", "bank_address", "registered", "SideChain", "check_config",
           "dots_layout", "probs_layout", "row_info_layout", "score_row_layout",
           "e_row_layout", "bank_row_layout", "score_params_layout"]

#: e banks used in turn (the score banks are two)
E_BANKS = 2


def check_config(config) -> AttentionConfig:
    """`config` if it is an AttentionConfig with 16-bit probabilities, else TypeError /
    ValueError."""
    if not isinstance(config, AttentionConfig):
        raise TypeError(f"config must be an AttentionConfig, not {config!r}")
    if config.prob_bits != 16:
        raise ValueError(f"prob_bits must be 16, not {config.prob_bits}")
    return config


def bank_depth(cfg: AttentionConfig) -> int:
    """Beats a bank holds: capacity / S."""
    return cfg.capacity // cfg.softmax_lanes


def bank_address(bank, addr, depth: int):
    """The memory address of beat `addr` of `bank` (banks of `depth` beats, one after the
    other); for a power-of-two depth just wires, so that no adder sits before a block RAM."""
    if depth & (depth - 1) == 0:
        return Cat(addr[:depth.bit_length() - 1], bank)
    return bank * depth + addr


def registered(m, src: dict, keys, tag: str) -> dict:
    """Registered copies (named ``{tag}_{key}``) of ``src[key]`` for each key of `keys`: the
    side information that travels along a pipeline beside its data."""
    out = {}
    for k in keys:
        out[k] = Signal.like(src[k], name=f"{tag}_{k}")
        m.d.sync += out[k].eq(src[k])
    return out


class SideChain:
    """The side information of a pipeline, one register stage after another: `advance` adds a
    stage that carries the named items of the previous one; `depth` counts the stages."""

    def __init__(self, m, first: dict):
        self.m = m
        self.stages = [first]

    def advance(self, keys, tag: str) -> dict:
        """A new stage (registers named ``{tag}_{key}``) carrying ``keys`` of the last one."""
        self.stages.append(registered(self.m, self.stages[-1], keys, tag))
        return self.stages[-1]

    @property
    def depth(self) -> int:
        return len(self.stages) - 1


def dots_layout(cfg: AttentionConfig) -> data.StructLayout:
    """A beat of dots into the softmax: a row stream of S signed dots."""
    return row_layout(signed(cfg.dot_width), cfg.softmax_lanes)


def probs_layout(cfg: AttentionConfig) -> data.StructLayout:
    """A beat of probabilities out of the softmax: a row stream of S U0.16 values."""
    return row_layout(unsigned(cfg.prob_bits), cfg.softmax_lanes)


def row_info_layout(cfg: AttentionConfig) -> data.StructLayout:
    """The softmax's one beat per row: the probability of the maximum, the sum of the
    exponentials, the row length, the maximum dot, the error flag."""
    return data.StructLayout({
        "p_max": unsigned(cfg.prob_bits),
        "esum": unsigned(cfg.esum_width),
        "n": range(cfg.capacity + 1),
        "max": signed(cfg.dot_width),
        "error": 1,
    })


def score_params_layout(cfg: AttentionConfig) -> data.StructLayout:
    """The score-scaling registers a row keeps from its first beat."""
    return data.StructLayout({
        "shift": range(cfg.dot_width + 1),
        "scale": unsigned(cfg.scale_bits),
        "post_shift": range(cfg.post_shift_max + 1),
    })


def e_row_layout(cfg: AttentionConfig) -> data.StructLayout:
    """What the exp pass records for a row in its e bank: the error flag, the row length n,
    its beats (1 for an error row), the count of its last beat (0 for an error row), its
    maximum dot."""
    return data.StructLayout({
        "error": 1,
        "n": range(cfg.capacity + 1),
        "beats": range(bank_depth(cfg) + 1),
        "last_count": range(cfg.softmax_lanes + 1),
        "max": signed(cfg.dot_width),
    })


def score_row_layout(cfg: AttentionConfig) -> data.StructLayout:
    """A row waiting in a score bank for the exp pass: its bank, `e_row_layout`'s fields and
    its score-scaling registers."""
    return data.StructLayout({
        "bank": 1,
        **{name: field.shape for name, field in e_row_layout(cfg)},
        **{name: field.shape for name, field in score_params_layout(cfg)},
    })


def bank_row_layout(cfg: AttentionConfig) -> data.StructLayout:
    """A row waiting in an e bank for the normalise pass: its bank, `e_row_layout`'s fields,
    its exponential sum esum, the reciprocal recip = round(2**33 / m) and its exponent norm
    (m = esum / 2**norm in [2**16, 2**17))."""
    return data.StructLayout({
        "bank": range(E_BANKS),
        **{name: field.shape for name, field in e_row_layout(cfg)},
        "esum": unsigned(cfg.esum_width),
        "recip": unsigned(cfg.recip_width),
        "norm": range(cfg.esum_width - cfg.prob_bits),
    })
