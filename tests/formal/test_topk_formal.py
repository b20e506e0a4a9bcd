# amaranth: UnusedElaboratable=no
"""Stream rules of the top-k engine's output, by SymbiYosys (bounded model check).

Every input of a tiny engine (2 lanes, 4-bit values, capacity 4, 2-bit digits: two radix
passes, the statistical unit included) is free (AnySeq): any beats, gaps, k, mode and output
backpressure, bad input included. Asserted at every step: once ``o.valid`` is high it stays high
until ``o.ready``, and ``o.payload`` does not change while ``o.valid & ~o.ready``. The depth
covers whole runs: several short runs end to end, errors and the statistical mode included.
"""

import pytest

from spatten.config import TopKConfig
from spatten.hw.topk.topk import TopK
from spatten.sim.infra.formal import check_stream_rules, formal_tools_missing

pytestmark = pytest.mark.skipif(formal_tools_missing() is not None,
                                reason=formal_tools_missing() or "")

TINY = TopKConfig(lanes=2, value_width=4, capacity=4, digit_bits=2, ratio_bits=2,
                  z_frac_bits=2)


def test_topk_output_obeys_stream_rules():
    r = check_stream_rules("rules_topk_tiny", TopK(config=TINY), "o", depth=40)
    print(f"{r.name}: {r.status} in {r.seconds:.1f} s (depth 40)")


def test_bounded_check_reaches_whole_runs():
    """The depth is not vacuous: within it the solver reaches the last beat of a run that
    selected two values and ended without error (a cover; fails if unreachable)."""
    from amaranth.hdl import Cover

    def cover(m, dut):
        m.d.comb += Cover(dut.o.valid & dut.o.ready & dut.o.payload.last
                          & (dut.o.payload.count == 2) & ~dut.error)

    r = check_stream_rules("cover_topk_tiny", TopK(config=TINY), "o", depth=40, mode="cover",
                           assume=cover)
    print(f"{r.name}: {r.status} in {r.seconds:.1f} s")
