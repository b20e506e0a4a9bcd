# amaranth: UnusedElaboratable=no
"""Stream rules of the ZeroEliminator and BeatPacker output ports, by SymbiYosys.

`spatten.sim.infra.formal.check_stream_rules` drives every input of the component (including the
output port's ready) with AnySeq and asserts: once ``o.valid`` is high it stays high until
``o.ready``, and ``o.payload`` is stable while ``o.valid & ~o.ready``. Both units freeze
completely while stalled, so the property is also proved for all time by k-induction (mode
"prove"); the default bounded model check runs too. Broken components must fail, and an
``assume`` callback must be able to rule inputs out.
"""

import pytest
from amaranth.hdl import Assume, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.hw.common.packer import BeatPacker
from spatten.hw.common.zero_elim import ZeroEliminator
from spatten.sim.infra.formal import (
    FormalFailure,
    check_stream_rules,
    formal_tools_missing,
    run_sby,
    stream_rules_harness,
)

pytestmark = pytest.mark.skipif(formal_tools_missing() is not None,
                                reason=formal_tools_missing() or "")


@pytest.mark.parametrize("lanes", [1, 4, 16])
@pytest.mark.parametrize("unit", [ZeroEliminator, BeatPacker])
def test_output_stream_rules_proved(unit, lanes):
    r = check_stream_rules(f"rules_{unit.__name__}_{lanes}", unit(unsigned(4), lanes), "o",
                           mode="prove", depth=4)
    print(f"{r.name}: {r.status} in {r.seconds:.1f} s")


@pytest.mark.parametrize("unit", [ZeroEliminator, BeatPacker])
def test_output_stream_rules_bmc(unit):
    r = check_stream_rules(f"rules_bmc_{unit.__name__}", unit(unsigned(4), 8), "o", depth=12)
    print(f"{r.name}: {r.status} in {r.seconds:.1f} s")


class BrokenStage(wiring.Component):
    """A one-beat register stage, broken on purpose in one of three ways:

    "payload": reloads its payload from i while stalled; "valid": drops o.valid after one
    stalled cycle; "on_zero": like "payload", but only when the incoming payload is 0.
    """

    i: In(stream.Signature(unsigned(4)))
    o: Out(stream.Signature(unsigned(4)))

    def __init__(self, fault):
        self.fault = fault
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        stalled = self.o.valid & ~self.o.ready
        m.d.comb += self.i.ready.eq(~stalled)
        with m.If(~stalled):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        with m.Else():
            if self.fault == "valid":
                m.d.sync += self.o.valid.eq(0)
            elif self.fault == "payload":
                m.d.sync += self.o.payload.eq(self.i.payload)
            elif self.fault == "on_zero":
                with m.If(self.i.payload == 0):
                    m.d.sync += self.o.payload.eq(self.i.payload)
        return m


@pytest.mark.parametrize("fault", ["payload", "valid", "on_zero"])
def test_broken_stage_fails(fault):
    with pytest.raises(FormalFailure, match="FAIL, exit"):
        check_stream_rules(f"rules_broken_{fault}", BrokenStage(fault), "o", depth=6)


def test_correct_stage_passes():
    check_stream_rules("rules_good_stage", BrokenStage(None), "o", mode="prove", depth=3)


def test_assume_callback_applies():
    def never_zero(m, dut):
        m.d.comb += Assume(dut.i.payload != 0)
    check_stream_rules("rules_assumed", BrokenStage("on_zero"), "o", depth=6, assume=never_zero)


def test_assume_callback_may_keep_history():
    """A callback with a register of its own: i.payload is 0 only in the first cycle."""
    def zero_only_first(m, dut):
        first = Signal(init=1)
        m.d.sync += first.eq(0)
        with m.If(~first):
            m.d.comb += Assume(dut.i.payload != 0)
    check_stream_rules("rules_assumed_hist", BrokenStage("on_zero"), "o", depth=6,
                       assume=zero_only_first)


def test_bad_arguments():
    with pytest.raises(TypeError, match="not a stream port"):
        stream_rules_harness(BrokenStage(None), "o.payload")
    with pytest.raises(ValueError, match="mode"):
        run_sby("x", "", mode="fast")
    with pytest.raises(ValueError, match="name"):
        run_sby("../x", "")
