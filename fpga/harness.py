"""A board top that keeps any component alive through synthesis, for timing and utilization runs.

`BoardHarness(make_dut, board=...)` wraps the component `make_dut()` returns:

- its `sync` clock comes from the board's PLL at the target frequency (`boards.ClockGen`), and
  its reset is held until the PLL has locked and a power-on counter has run 15 us (the iCE40's
  block RAMs read as zero for about 3 us after configuration);
- every input port bit of the DUT (stream payload/valid/ready members included, at any depth of
  nesting) is driven by its own bit of a free-running shift-register LFSR, so no two inputs are
  equal and none is constant; inputs simply toggle: this is a synthesis harness, not a
  functional one;
- every output port bit is registered at the boundary, folded into a MISR (each bit XORed with
  its rotated neighbour's state, so two equal outputs cannot cancel) and then XOR-reduced by a
  tree of registered 4-input XORs into the board's LEDs (8 on the ULX3S, 2 on the iCEBreaker),
  each LED the tree of a contiguous run of the output bits.

Every DUT port is therefore a flip-flop away from the harness, and the Fmax nextpnr reports is
set by the DUT's internal paths unless the DUT itself has combinational paths from input to
output ports (then that path plus at most one LUT of the harness is measured).
"""


from amaranth.hdl import Cat, ClockDomain, ClockSignal, Module, ResetSignal, Signal, Value
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In

from ..config import Config
from .boards import BOARDS, Board, ClockGen
from .boards import board as get_board

__all__ = ["BoardHarness", "dut_port_bits", "POR_SECONDS"]

#: Reset is held this long after the PLL locks.
POR_SECONDS = 15e-6


def dut_port_bits(dut: wiring.Component) -> tuple[list[tuple[str, Value]], list[tuple[str, Value]]]:
    """The DUT's port values, flattened: ([(name, value), ...] of inputs, same of outputs)."""
    inputs, outputs = [], []
    for path, member, value in dut.signature.flatten(dut):
        name = ".".join(str(p) for p in path)
        (inputs if member.flow == In else outputs).append((name, Value.cast(value)))
    return inputs, outputs


class BoardHarness(wiring.Component):
    """Top level for `platform.build`: the DUT between an LFSR and the LEDs (no ports).

    Parameters:
        make_dut  callable with no arguments returning a `wiring.Component` with at least one
                  output port bit; called once, here
        board     a `boards.Board` or its name; None: found from the platform's class when
                  elaborated (then `mhz` must be given or the default config's target is used)
        mhz       target clock in MHz; None: `board.target_mhz(config)`
        config    `Config` whose `target_mhz` gives the default clock (default `Config()`)

    Attributes after construction: `dut`, `in_bits`, `out_bits`, and, when `board` is known,
    `board` and `pll` (the `boards.PllSetting` used).
    """

    def __init__(self, make_dut, *, board: Board | str | None = None, mhz: float | None = None,
                 config: Config | None = None):
        try:
            self._setup(make_dut, board, mhz, config)
        except Exception:
            self._MustUse__silence = True   # refused: do not also warn that it went unused
            raise
        super().__init__({})

    def _setup(self, make_dut, board, mhz, config):
        if not callable(make_dut):
            raise TypeError(f"make_dut must be a callable returning a wiring.Component, "
                            f"not {make_dut!r}")
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a Config or None, not {config!r}")
        dut = make_dut()
        if not isinstance(dut, wiring.Component):
            raise TypeError(f"make_dut() must return a wiring.Component, not {dut!r}")
        inputs, outputs = dut_port_bits(dut)
        if not outputs:
            dut._MustUse__silence = True
            raise ValueError("the DUT has no output port bits: nothing would survive synthesis")
        self.dut = dut
        self.in_bits = sum(len(v) for _, v in inputs)
        self.out_bits = sum(len(v) for _, v in outputs)
        self._inputs, self._outputs = inputs, outputs
        self._config = config
        self._mhz = mhz
        self.board = None
        self.pll = None
        if board is not None:
            self._set_board(board)

    def _set_board(self, board):
        self.board = board if isinstance(board, Board) else get_board(board)
        mhz = self.board.target_mhz(self._config) if self._mhz is None else self._mhz
        self.pll = self.board.pll(mhz)

    def elaborate(self, platform):
        if self.board is None:
            if platform is None:
                raise ValueError("BoardHarness needs a board platform to elaborate")
            matches = [b for b in BOARDS.values() if b.platform_class == type(platform).__name__]
            if not matches:
                raise ValueError(f"no board known for platform {type(platform).__name__}")
            self._set_board(matches[0])
        board, pll = self.board, self.pll

        m = Module()

        # Clock and reset. The harness's own registers are in the reset-less domain `harness`;
        # only the DUT sees a reset, straight from a flip-flop (no logic on the reset net).
        m.submodules.clkgen = clkgen = ClockGen(board, pll)
        m.domains.sync = ClockDomain("sync")
        m.domains.harness = ClockDomain("harness", reset_less=True, local=True)
        m.d.comb += [ClockSignal("sync").eq(clkgen.clk), ClockSignal("harness").eq(clkgen.clk)]
        locked = Signal()
        m.submodules.lock_sync = FFSynchronizer(clkgen.locked, locked, o_domain="harness")
        delay = max(16, int(POR_SECONDS * pll.f_out_mhz * 1e6))
        timer = Signal(range(delay + 1))
        rst = Signal(init=1)
        with m.If(~locked):
            m.d.harness += [timer.eq(0), rst.eq(1)]
        with m.Elif(timer == delay):
            m.d.harness += rst.eq(0)
        with m.Else():
            m.d.harness += timer.eq(timer + 1)
        m.d.comb += ResetSignal("sync").eq(rst)

        m.submodules.dut = self.dut

        # Inputs: one LFSR bit each. s' = (s << 1) | parity(taps); s[n-1] is a tap, so the map
        # is invertible and a nonzero state never reaches zero.
        n = max(8, self.in_bits)
        lfsr = Signal(n, init=_lfsr_seed(n))
        taps = sorted({n - 1, n - 2, n // 2, n // 3})
        m.d.harness += lfsr.eq(Cat(Cat(*(lfsr[t] for t in taps)).xor(), lfsr[:-1]))
        offset = 0
        for _, value in self._inputs:
            m.d.comb += value.eq(lfsr[offset:offset + len(value)])
            offset += len(value)

        # Outputs: boundary register, MISR, then registered XOR trees into the LEDs.
        out_q = Signal(self.out_bits)
        m.d.harness += out_q.eq(Cat(*(v for _, v in self._outputs)))
        misr = Signal(self.out_bits)
        m.d.harness += misr.eq(out_q ^ misr.rotate_left(1))
        # LED i takes a contiguous run of output bits: neighbouring bits come from the same
        # part of the DUT, so each tree stays local (every LED taking every 8th bit of all
        # outputs spread eight trees over the whole DUT)
        leds = min(board.leds, self.out_bits)
        for i in range(leds):
            lo, hi = i * self.out_bits // leds, (i + 1) * self.out_bits // leds
            bits = [misr[j] for j in range(lo, hi)]
            level = 0
            while len(bits) > 1:
                reduced = []
                for k in range(0, len(bits), 4):
                    r = Signal(name=f"fold{i}_l{level}_{k // 4}")
                    m.d.harness += r.eq(Cat(*bits[k:k + 4]).xor())
                    reduced.append(r)
                bits, level = reduced, level + 1
            led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.submodules[f"led{i}"] = led
            m.d.comb += led.o.eq(bits[0])
        return m


def _lfsr_seed(n: int) -> int:
    """A fixed, nonzero, irregular start state."""
    pattern = 0x9E3779B97F4A7C15  # golden-ratio constant
    seed = 0
    for k in range(0, n, 64):
        seed |= pattern << k
    return (seed & ((1 << n) - 1)) | 1

