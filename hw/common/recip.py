"""The normalise-and-divide reciprocal: one restoring divider, shared by the softmax (the
reciprocal of a row's exponential sum) and prob x V (the reciprocal of a query's probability
sum, for renormalisation).

A value x is normalised to a divisor m with its top bit set (m = x / 2**exponent, truncated, in
[2**(divisor_bits - 1), 2**divisor_bits)), and m is divided into a constant by restoring division,
one or more quotient bits a cycle; the quotient is rounded half up. The user scales its result by
the exponent (or, equivalently, shifts its numerator left by the leading zeros of x).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Reciprocal", "ReciprocalPhase", "reciprocal_layout"]


class ReciprocalPhase(enum.Enum, shape=2):
    """What the reciprocal unit is doing."""

    IDLE = 0          #: ready for a value
    NORMALISE = 1     #: shifting the value into the divisor
    DIVIDE = 2        #: restoring division, steps_per_cycle quotient bits a cycle
    ROUND = 3         #: the rounded result is offered on ``o``


def _leading_zeros_max(value_width: int, divisor_bits: int, normalise_up: bool) -> int:
    return value_width if normalise_up else value_width - divisor_bits


def reciprocal_layout(*, value_width: int, divisor_bits: int, normalise_up: bool,
                      saturate: bool) -> data.StructLayout:
    """The result of `Reciprocal` with these parameters: ``recip`` (``divisor_bits`` bits when
    saturating, else one more), ``exponent`` (signed when values are normalised up) and
    ``leading_zeros`` (value_width - divisor_bits - exponent)."""
    lz_max = _leading_zeros_max(value_width, divisor_bits, normalise_up)
    top = value_width - divisor_bits
    return data.StructLayout({
        "recip": unsigned(divisor_bits if saturate else divisor_bits + 1),
        "exponent": range(top - lz_max, top + 1),
        "leading_zeros": range(lz_max + 1),
    })


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        upper = "" if hi is None else f" and at most {hi}"
        raise ValueError(f"{name} must be at least {lo}{upper}, not {value}")


class Reciprocal(wiring.Component):
    """round(2**(2 divisor_bits - 1) / m) for the divisor m normalised from a value x.

    Parameters (keyword-only)
    -------------------------
    value_width : int
        Bits of x (at least divisor_bits).
    divisor_bits : int
        MW, bits of the divisor m (at least 2).
    steps_per_cycle : int
        Quotient bits computed a cycle; it must divide `quotient_bits` = MW + 2.
    normalise_up : bool
        True: every x is normalised (shifted left or right). False: x is only shifted right; the
        user promises x = 0 or x >= 2**(MW - 1).
    saturate : bool
        True: ``recip`` is MW bits, saturated at 2**MW - 1 (m = 2**(MW - 1) would give 2**MW).
        False: ``recip`` is MW + 1 bits, exact.

    Ports
    -----
    i : In(stream.Signature(unsigned(value_width)))
        x.
    o : Out(stream.Signature(reciprocal_layout(...)))
        One result per x, in order: ``exponent`` e = bit_length(x) - MW (0 for x < 2**MW
        without normalise_up; -MW for x = 0 with it); ``leading_zeros`` = value_width - MW - e
        (x << leading_zeros has its top bit at value_width - 1); m = (x << leading_zeros) >>
        (value_width - MW) (= x / 2**e truncated); ``recip`` = floor(2**(2 MW - 1) / m + 1/2),
        in (2**(MW - 1), 2**MW] (saturated as above). x = 0 (m = 0) gives ``recip`` = 2**MW - 1
        when saturating, else 0. So x * recip / 2**(2 MW - 1 + e) is 1 within 2**-(MW - 1).

    Timing: one value at a time. ``i.ready`` is high only while idle; a value taken in cycle t is
    offered on ``o`` from cycle t + `latency` (= 2 + quotient_bits / steps_per_cycle: normalise,
    divide, and the rounding on the output), and held until taken; the unit is idle (``i.ready``
    high) the cycle after the ``o`` transfer. ``o.valid`` comes from a register, ``o.payload``
    from registers through the rounding, and neither depends on ``o.ready``.

    The division is restoring: the remainder, 2**(MW - 2) at first, doubled and reduced by m
    when at least m, one quotient bit per step (one carry chain per step, its sign the bit).
    """

    def __init__(self, *, value_width: int, divisor_bits: int, steps_per_cycle: int = 1,
                 normalise_up: bool, saturate: bool):
        _check_int("divisor_bits", divisor_bits, 2)
        _check_int("value_width", value_width, divisor_bits)
        for name, flag in (("normalise_up", normalise_up), ("saturate", saturate)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, not {flag!r}")
        _check_int("steps_per_cycle", steps_per_cycle, 1)
        if (divisor_bits + 2) % steps_per_cycle:
            raise ValueError(f"steps_per_cycle must divide the quotient bits (divisor_bits + 2 ="
                             f" {divisor_bits + 2}), not {steps_per_cycle}")
        self.value_width = value_width
        self.divisor_bits = divisor_bits
        self.steps_per_cycle = steps_per_cycle
        self.normalise_up = normalise_up
        self.saturate = saturate
        self.result_layout = reciprocal_layout(value_width=value_width,
                                               divisor_bits=divisor_bits,
                                               normalise_up=normalise_up, saturate=saturate)
        super().__init__({
            "i": In(stream.Signature(unsigned(value_width))),
            "o": Out(stream.Signature(self.result_layout)),
        })

    @property
    def quotient_bits(self) -> int:
        """Bits of the quotient floor(2**(2 MW) / m): MW + 2 (m >= 2**(MW - 1))."""
        return self.divisor_bits + 2

    @property
    def latency(self) -> int:
        """Cycles from a value's ``i`` transfer to its result on ``o``."""
        return 2 + self.quotient_bits // self.steps_per_cycle

    def elaborate(self, platform):
        m = Module()
        XW, MW, N = self.value_width, self.divisor_bits, self.quotient_bits
        top = XW - MW                  # exponent + leading zeros

        phase = Signal(ReciprocalPhase)
        value = Signal(XW)
        divisor = Signal(MW)
        remainder = Signal(MW)
        # the quotient, below a marker bit that is shifted up with it: it counts the steps
        quotient = Signal(N + 1)

        # the normalising shift of the offered value, from a priority encoder (the highest set
        # bit wins): to the left by its leading zeros when normalising up, else to the right by
        # its exponent (only the bits at and above MW are looked at)
        if self.normalise_up:
            shape, default, bits = self.result_layout["leading_zeros"].shape, XW, range(XW)
            shifts = [XW - 1 - bit for bit in bits]
        else:
            shape, default, bits = self.result_layout["exponent"].shape, 0, range(MW, XW)
            shifts = [bit + 1 - MW for bit in bits]
        shift = Signal(shape, name="shift")
        offered_shift = Signal(shape)
        m.d.comb += offered_shift.eq(default)
        for bit, bit_shift in zip(bits, shifts, strict=True):
            with m.If(self.i.payload[bit]):
                m.d.comb += offered_shift.eq(bit_shift)
        if self.normalise_up:
            normalised = (value << shift)[top:XW]
            m.d.comb += [self.o.payload.leading_zeros.eq(shift),
                         self.o.payload.exponent.eq(top - shift)]
        else:
            normalised = (value >> shift)[:MW]
            m.d.comb += [self.o.payload.exponent.eq(shift),
                         self.o.payload.leading_zeros.eq(top - shift)]

        m.d.comb += [self.i.ready.eq(phase == ReciprocalPhase.IDLE),
                     self.o.valid.eq(phase == ReciprocalPhase.ROUND)]

        # restoring division: steps_per_cycle steps of the remainder and quotient
        rem, quo = remainder, quotient
        for k in range(self.steps_per_cycle):
            doubled = Cat(0, rem)
            difference = Signal(signed(MW + 2), name=f"difference{k}")
            m.d.comb += difference.eq(doubled - divisor)    # one carry chain; its sign: < m
            fits = ~difference[-1]
            rem = Mux(fits, difference[:MW], doubled[:MW])
            quo = Cat(fits, quo)[:N + 1]

        with m.Switch(phase):
            with m.Case(ReciprocalPhase.IDLE):
                with m.If(self.i.valid):
                    m.d.sync += [value.eq(self.i.payload), shift.eq(offered_shift),
                                 phase.eq(ReciprocalPhase.NORMALISE)]
            with m.Case(ReciprocalPhase.NORMALISE):
                m.d.sync += [divisor.eq(normalised),
                             remainder.eq(1 << (MW - 2)), quotient.eq(1),
                             phase.eq(ReciprocalPhase.DIVIDE)]
            with m.Case(ReciprocalPhase.DIVIDE):
                m.d.sync += [remainder.eq(rem), quotient.eq(quo)]
                with m.If(quotient[N - self.steps_per_cycle]):     # the last steps
                    m.d.sync += phase.eq(ReciprocalPhase.ROUND)
            with m.Case(ReciprocalPhase.ROUND):
                with m.If(self.o.ready):
                    m.d.sync += phase.eq(ReciprocalPhase.IDLE)

        rounded = (quotient[:N] + 1)[1:]                      # N bits
        if self.saturate:
            recip = Mux(rounded[MW:] != 0, (1 << MW) - 1, rounded[:MW])
        else:
            recip = rounded[:MW + 1]
        m.d.comb += self.o.payload.recip.eq(recip)
        return m

