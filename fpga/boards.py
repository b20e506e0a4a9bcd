"""The boards the design is built for, and how each one makes its `sync` clock.

Each board's oscillator is multiplied up to the target clock by the device PLL (ECP5 `EHXPLLL`,
iCE40 `SB_PLL40_PAD`), so nextpnr derives the constraint of the `sync` clock from the PLL and
reports Fmax against it:

    >>> from spatten.fpga.boards import board
    >>> b = board("ulx3s-85f")
    >>> s = b.pll(100.0)
    >>> (s.params["CLKI_DIV"], s.params["CLKFB_DIV"], s.params["CLKOP_DIV"], s.f_out_mhz)
    (1, 4, 6, 100.0)
    >>> board("icebreaker").pll(40.0).f_out_mhz     # 12 MHz * 53 / 16: the closest to 40
    39.75

The divider searches follow Project Trellis' `ecppll` and IceStorm's `icepll` (same limits, same
choice among equally close settings), so their results match those tools' (an exact tie that
float32 rounding breaks inside `ecppll`, such as 133 MHz from 25 MHz, may come out the other way:
same output frequency, other dividers).
"""


import math
from dataclasses import dataclass, field

from amaranth.hdl import Instance, Module
from amaranth.lib import io, wiring
from amaranth.lib.wiring import Out

from ..config import Config

__all__ = ["PllSetting", "ecp5_pll", "ice40_pll", "Board", "BOARDS", "board", "board_names",
           "ClockGen"]


@dataclass(frozen=True)
class PllSetting:
    """One PLL configuration: the primitive, its parameters, and the frequencies it gives."""

    primitive: str
    f_in_mhz: float
    f_req_mhz: float
    f_out_mhz: float      # achieved output frequency
    f_pfd_mhz: float      # phase detector frequency
    f_vco_mhz: float
    params: dict = field(default_factory=dict)   # the primitive's parameters, by name

    @property
    def error(self) -> float:
        """Relative error of the achieved frequency, (achieved - requested) / requested."""
        return (self.f_out_mhz - self.f_req_mhz) / self.f_req_mhz


def _check_mhz(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of MHz, not {value!r}")
    if not (lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}] MHz, not {value}")
    return float(value)


# ECP5 sysCLOCK PLL limits, as Project Trellis' ecppll uses them (MHz).
ECP5_IN = (8.0, 400.0)
ECP5_OUT = (10.0, 400.0)
ECP5_PFD = (3.125, 400.0)
ECP5_VCO = (400.0, 800.0)


def ecp5_pll(f_in_mhz: float, f_out_mhz: float) -> PllSetting:
    """The `EHXPLLL` setting (CLKOP fed back) whose output is closest to `f_out_mhz`.

    f_pfd = f_in / CLKI_DIV, f_out = f_pfd * CLKFB_DIV, f_vco = f_out * CLKOP_DIV; among settings
    equally close to the request the one with f_vco nearest 600 MHz wins (as in `ecppll`).
    CLKOP_CPHASE is half an output period in VCO cycles, as `ecppll` and Lattice's tools set it.
    """
    f_in = _check_mhz("f_in_mhz", f_in_mhz, *ECP5_IN)
    f_req = _check_mhz("f_out_mhz", f_out_mhz, *ECP5_OUT)
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not ECP5_PFD[0] <= f_pfd <= ECP5_PFD[1]:
            continue
        for clkfb_div in range(1, 81):
            f_out = f_pfd * clkfb_div
            for clkop_div in range(1, 129):
                f_vco = f_out * clkop_div
                if not ECP5_VCO[0] <= f_vco <= ECP5_VCO[1]:
                    continue
                # rounded so that float noise does not break exact ties
                key = (round(abs(f_out - f_req), 9), round(abs(f_vco - 600.0), 9))
                if best is None or key < best[0]:
                    best = (key, clki_div, clkfb_div, clkop_div, f_pfd, f_out, f_vco)
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {f_req} MHz from {f_in} MHz")
    _, clki_div, clkfb_div, clkop_div, f_pfd, f_out, f_vco = best
    params = {
        "CLKI_DIV": clki_div,
        "CLKFB_DIV": clkfb_div,
        "CLKOP_DIV": clkop_div,
        "CLKOP_CPHASE": clkop_div // 2,
        "CLKOP_FPHASE": 0,
        "CLKOP_ENABLE": "ENABLED",
        "FEEDBK_PATH": "CLKOP",
        "PLLRST_ENA": "DISABLED",
        "INTFB_WAKE": "DISABLED",
        "STDBY_ENABLE": "DISABLED",
        "DPHASE_SOURCE": "DISABLED",
        "OUTDIVIDER_MUXA": "DIVA",
    }
    return PllSetting("EHXPLLL", f_in, f_req, f_out, f_pfd, f_vco, params)


# iCE40 PLL limits, as IceStorm's icepll uses them (MHz).
ICE40_IN = (10.0, 133.0)
ICE40_PFD = (10.0, 133.0)
ICE40_VCO = (533.0, 1066.0)
ICE40_OUT = (16.0, 275.0)


def ice40_filter_range(f_pfd_mhz: float) -> int:
    """The loop filter setting icepll picks for a phase detector frequency."""
    for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if f_pfd_mhz < limit:
            return value
    return 6


def ice40_pll(f_in_mhz: float, f_out_mhz: float) -> PllSetting:
    """The `SB_PLL40_*` setting (SIMPLE feedback) whose output is closest to `f_out_mhz`.

    f_pfd = f_in / (DIVR + 1), f_vco = f_pfd * (DIVF + 1), f_out = f_vco / 2**DIVQ; the first
    setting found in icepll's search order wins among equally close ones.
    """
    f_in = _check_mhz("f_in_mhz", f_in_mhz, *ICE40_IN)
    f_req = _check_mhz("f_out_mhz", f_out_mhz, *ICE40_OUT)
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not ICE40_PFD[0] <= f_pfd <= ICE40_PFD[1]:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not ICE40_VCO[0] <= f_vco <= ICE40_VCO[1]:
                continue
            for divq in range(1, 7):
                f_out = f_vco / (1 << divq)
                if best is None or abs(f_out - f_req) < best[0]:
                    best = (abs(f_out - f_req), divr, divf, divq, f_pfd, f_vco, f_out)
    if best is None:
        raise ValueError(f"no iCE40 PLL setting makes {f_req} MHz from {f_in} MHz")
    _, divr, divf, divq, f_pfd, f_vco, f_out = best
    params = {
        "FEEDBACK_PATH": "SIMPLE",
        "PLLOUT_SELECT": "GENCLK",
        "DIVR": divr,
        "DIVF": divf,
        "DIVQ": divq,
        "FILTER_RANGE": ice40_filter_range(f_pfd),
    }
    return PllSetting("SB_PLL40_PAD", f_in, f_req, f_out, f_pfd, f_vco, params)


@dataclass(frozen=True)
class Board:
    """A supported board: its Amaranth platform and what the build needs to know about it."""

    name: str
    platform_module: str      # amaranth_boards module
    platform_class: str       # platform class in that module
    family: str               # "ecp5" or "ice40"
    device: str
    clock_resource: str       # the oscillator's resource name
    osc_mhz: float
    leds: int                 # user LEDs `led` 0..leds-1 the harness may drive
    # device totals by nextpnr cell type; nextpnr-ecp5 reports `available` only for the types a
    # design uses, so these fill the gaps (DP16KD, MULT18X18D...)
    resources: dict
    synth_opts: str = ""      # extra options for Yosys' synth_<family>
    # nextpnr placer seed used unless one is given: results move ~5% with it, and on a crowded
    # design some seeds leave the router congested for many minutes (seen: ECP5 seed 1, >15 min)
    seed: int = 1

    def make_platform(self):
        """A fresh instance of the board's Amaranth platform."""
        import importlib

        module = importlib.import_module(self.platform_module)
        return getattr(module, self.platform_class)()

    def target_mhz(self, config: Config | None = None) -> float:
        """The clock the board is built for: `config.target_mhz[name]` (default `Config()`)."""
        config = Config() if config is None else config
        try:
            return float(config.target_mhz[self.name])
        except KeyError:
            raise ValueError(f"configuration {config.name!r} has no target clock for board "
                             f"{self.name!r} (it has: {', '.join(config.target_mhz)})") from None

    def pll(self, mhz: float) -> PllSetting:
        """The PLL setting that makes `mhz` from the board's oscillator."""
        if self.family == "ecp5":
            return ecp5_pll(self.osc_mhz, mhz)
        return ice40_pll(self.osc_mhz, mhz)


BOARDS: dict[str, Board] = {
    "ulx3s-85f": Board(
        name="ulx3s-85f",
        platform_module="amaranth_boards.ulx3s",
        platform_class="ULX3S_85F_Platform",
        family="ecp5",
        device="LFE5U-85F-6BG381C",
        clock_resource="clk25",
        osc_mhz=25.0,
        leds=8,
        resources={"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "DP16KD": 208,
                   "MULT18X18D": 156, "ALU54B": 78, "TRELLIS_RAMW": 10455, "TRELLIS_IO": 365,
                   "EHXPLLL": 4, "DCCA": 56},
        seed=3,
    ),
    "icebreaker": Board(
        name="icebreaker",
        platform_module="amaranth_boards.icebreaker",
        platform_class="ICEBreakerPlatform",
        family="ice40",
        device="iCE40UP5K-SG48",
        clock_resource="clk12",   # pin 35, the PLL's dedicated input pad: SB_PLL40_PAD fits
        osc_mhz=12.0,
        leds=2,
        resources={"ICESTORM_LC": 5280, "ICESTORM_RAM": 30, "ICESTORM_SPRAM": 4,
                   "ICESTORM_DSP": 8, "SB_IO": 39, "SB_GB": 8, "ICESTORM_PLL": 1},
        synth_opts="-dsp",
        seed=2,
    ),
}


def board_names() -> list[str]:
    return list(BOARDS)


def board(name: str) -> Board:
    """The named board; a clear error lists the names that exist."""
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown board {name!r}; choose one of: {', '.join(BOARDS)}") from None


class ClockGen(wiring.Component):
    """The board's oscillator through its PLL: `clk` runs at `setting.f_out_mhz`.

    Ports:
        clk     Out(1)  the PLL's output clock (to drive a ClockSignal)
        locked  Out(1)  the PLL's lock flag, asynchronous to `clk`

    Requests the board's clock resource itself (raw, `dir="-"`), so it elaborates only with the
    board's platform.
    """

    clk: Out(1)
    locked: Out(1)

    def __init__(self, board: Board, setting: PllSetting):
        if not isinstance(board, Board):
            raise TypeError(f"board must be a Board, not {board!r}")
        if not isinstance(setting, PllSetting):
            raise TypeError(f"setting must be a PllSetting, not {setting!r}")
        if not math.isclose(setting.f_in_mhz, board.osc_mhz):
            raise ValueError(f"setting is for a {setting.f_in_mhz} MHz input; board "
                             f"{board.name!r} has a {board.osc_mhz} MHz oscillator")
        self.board = board
        self.setting = setting
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        pin = platform.request(self.board.clock_resource, 0, dir="-")
        p = {f"p_{k}": v for k, v in self.setting.params.items()}
        if self.setting.primitive == "EHXPLLL":
            m.submodules.clk_buf = clk_buf = io.Buffer("i", pin)
            m.submodules.pll = Instance(
                "EHXPLLL",
                # loop filter settings every ecppll-generated EHXPLLL carries
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                a_FREQUENCY_PIN_CLKI=f"{self.setting.f_in_mhz:g}",
                a_FREQUENCY_PIN_CLKOP=f"{self.setting.f_out_mhz:g}",
                **p,
                i_CLKI=clk_buf.i, i_CLKFB=self.clk, i_RST=0, i_STDBY=0,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=self.clk, o_LOCK=self.locked,
            )
        elif self.setting.primitive == "SB_PLL40_PAD":
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                **p,
                i_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=self.clk, o_LOCK=self.locked,
            )
        else:
            raise ValueError(f"unsupported PLL primitive {self.setting.primitive!r}")
        return m

