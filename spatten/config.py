"""The single source of every width, depth and lane count.

Plain data: no Amaranth, no numpy. The RTL (`hw/`), the golden models (`golden/`), the testbenches
(`sim/`), the board builds (`fpga/`) and the command line all read a `Config`; none of them keeps a
copy of its numbers.

    >>> from spatten.config import preset
    >>> cfg = preset("default")
    >>> cfg.topk.lanes, cfg.topk.value_width, cfg.topk.capacity
    (16, 16, 1024)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["TopKConfig", "Config", "PRESETS", "preset", "preset_names", "zero_eliminator_latency",
           "z_table"]


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")


@dataclass(frozen=True)
class TopKConfig:
    """Parameters of the top-k engine (`hw/topk.py`).

    lanes        P, values per input/output beat and comparisons per cycle (power of two, 1..32)
    value_width  W, bits of each signed input value (2..32)
    capacity     n_max, the largest n one run may hold (a multiple of `lanes`, up to 65536)
    digit_bits   D, bits of one radix-select digit; each pass keeps 2**D - 1 running counts
    z_frac_bits  fraction bits of the Phi^-1 table of the statistical mode
    ratio_bits   k/n is quantized to this many fraction bits to index that table
    """

    lanes: int = 16
    value_width: int = 16
    capacity: int = 1024
    digit_bits: int = 4
    z_frac_bits: int = 8
    ratio_bits: int = 6

    def __post_init__(self):
        _check_int("lanes", self.lanes, 1, 32)
        if not _is_pow2(self.lanes):
            raise ValueError(f"lanes must be a power of two (1, 2, 4, 8, 16 or 32), not {self.lanes}")
        _check_int("value_width", self.value_width, 2, 32)
        _check_int("capacity", self.capacity, 1, 65536)
        if self.capacity % self.lanes:
            raise ValueError(
                f"capacity must be a multiple of lanes ({self.lanes}), not {self.capacity}")
        _check_int("digit_bits", self.digit_bits, 1, 6)
        _check_int("z_frac_bits", self.z_frac_bits, 2, 16)
        _check_int("ratio_bits", self.ratio_bits, 2, 10)

    # Derived quantities: computed here once so that every user agrees on them.
    @property
    def rows(self) -> int:
        """Depth of each on-chip buffer, in beats of `lanes` values."""
        return self.capacity // self.lanes

    @property
    def digits(self) -> int:
        """Number of radix digits that cover a value: ceil(W / D)."""
        return -(-self.value_width // self.digit_bits)

    @property
    def key_width(self) -> int:
        """Width of the unsigned sort key (value with its sign bit flipped, zero-extended)."""
        return self.digits * self.digit_bits

    @property
    def index_width(self) -> int:
        """Bits of an element index (0..capacity-1)."""
        return max(1, (self.capacity - 1).bit_length())

    @property
    def count_width(self) -> int:
        """Bits of a count (0..capacity), such as n and k."""
        return self.capacity.bit_length()

    @property
    def value_min(self) -> int:
        return -(1 << (self.value_width - 1))

    @property
    def value_max(self) -> int:
        return (1 << (self.value_width - 1)) - 1

    @property
    def lane_bits(self) -> int:
        """log2(lanes)."""
        return int(math.log2(self.lanes))


@dataclass(frozen=True)
class Config:
    """The whole accelerator's configuration: one field per unit."""

    name: str = "default"
    topk: TopKConfig = field(default_factory=TopKConfig)
    #: clock the board builds are constrained at, in MHz, per board name
    target_mhz: dict = field(default_factory=lambda: {"ulx3s-85f": 100.0, "icebreaker": 40.0})

    def replace(self, **changes) -> "Config":
        """A copy with `changes`; `topk_<field>=` keywords change the top-k engine's fields."""
        topk = {k[5:]: v for k, v in changes.items() if k.startswith("topk_")}
        rest = {k: v for k, v in changes.items() if not k.startswith("topk_")}
        cfg = dataclasses.replace(self, **rest)
        if topk:
            cfg = dataclasses.replace(cfg, topk=dataclasses.replace(cfg.topk, **topk))
        return cfg


PRESETS: dict[str, Config] = {
    # SpAtten-1/8 scale for the ULX3S-85F (ECP5-85F).
    "default": Config(name="default", topk=TopKConfig(lanes=16, value_width=16, capacity=1024)),
    # Fits the iCEBreaker's iCE40UP5K (5280 LUTs, 120 kbit of block RAM).
    "small": Config(name="small", topk=TopKConfig(lanes=4, value_width=12, capacity=256,
                                                  digit_bits=3)),
    # The default engine with room for 4096 values (benchmarks at n = 4096).
    "large": Config(name="large", topk=TopKConfig(lanes=16, value_width=16, capacity=4096)),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str) -> Config:
    """The named preset; a clear error lists the names that exist."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown configuration {name!r}; choose one of: {', '.join(PRESETS)}") from None


def zero_eliminator_latency(lanes: int) -> int:
    """Cycles from a beat entering `hw.zero_elim.ZeroEliminator` to its compacted beat leaving it,
    when the output is never stalled: one register after the prefix count, then one after every
    second of the log2(lanes) shift stages (rounded up)."""
    stages = int(math.log2(lanes))
    return 1 + (stages + 1) // 2


def z_table(ratio_bits: int, z_frac_bits: int) -> list[int]:
    """Phi^-1 table of the statistical top-k: entry r (0 <= r < 2**ratio_bits) is
    round(Phi^-1(1 - (r + 0.5) / 2**ratio_bits) * 2**z_frac_bits), the number of standard
    deviations above the mean that leaves a fraction (r + 0.5) / 2**ratio_bits of a normal
    population above it. Standard library only, so RTL and golden model build the same table."""
    from statistics import NormalDist

    nd = NormalDist()
    size = 1 << ratio_bits
    return [round(nd.inv_cdf(1.0 - (r + 0.5) / size) * (1 << z_frac_bits)) for r in range(size)]
