"""The units that can be emitted, simulated and built on their own, by name.

Each entry makes the unit's top `wiring.Component` from a whole `Config`; the command line
(`spatten verilog|synth --top NAME`) and the board builds look units up here.
"""

from __future__ import annotations

from spatten.config import Config

__all__ = ["TOPS", "make_top"]


def _topk(cfg: Config):
    from .topk import TopK

    return TopK(config=cfg.topk)


def _attention(cfg: Config):
    from .attention import Attention

    return Attention(config=cfg.attention)


def _core(cfg: Config):
    from .core import Core

    # three query heads per K/V head, as in SmolLM2 (MiniLM uses one)
    return Core(config=cfg, group=3)


TOPS = {
    "topk": _topk,
    "attention": _attention,
    "core": _core,
}


def make_top(name: str, cfg: Config):
    """The unit `name` built for `cfg`; a clear error lists the names that exist."""
    try:
        factory = TOPS[name]
    except KeyError:
        raise ValueError(f"unknown top {name!r}; choose one of: {', '.join(TOPS)}") from None
    return factory(cfg)
