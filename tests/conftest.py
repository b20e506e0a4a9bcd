"""Shared pytest configuration: which tests are slow.

The markers (synth, slow) are registered in pyproject.toml, [tool.pytest.ini_options], and
pytest runs with --strict-markers. `make test-fast` leaves out the tests marked synth (real FPGA
builds, marked where they are defined) and slow, marked here from the list below.
"""

import pytest

from spatten.sim.infra.testbench import pick_seed

#: The tests marked slow: each over 100 s of one worker in `make test` on the loaded 2-core
#: machine of issue 14 (10-15 s and more on a free one), together about 90 % of the suite's
#: time. Nearly all build and run a unit's RTL in Verilator or Icarus (cocotb); an entry is a
#: test function (all its parametrizations) or a whole module. tests/test_makefile.py checks
#: that each entry still names a test.
SLOW_TESTS = (
    "tests/test_attention.py::test_attention_rtl",
    "tests/test_attention.py::test_attention_progressive_6_6",
    "tests/test_topk.py::test_topk_rtl",
    "tests/test_core.py::test_core_rtl",
    "tests/test_pv.py::test_narrow_accumulators",
    "tests/test_pv.py::test_cocotb",
    "tests/test_softmax.py::test_softmax_cocotb",
    "tests/test_qk.py::test_cocotb_verilator",
    "tests/test_value_select.py::test_cycles_exact",
    "tests/test_value_select.py::test_cocotb",
    "tests/test_dram.py::test_cocotb",
    "tests/test_sim_infra.py::test_stream_design",
    "tests/test_cli.py::test_attention_progressive_quantization",
    "tests/test_cli.py::test_attention_runs_rtl_and_writes_json",
    "tests/test_cli.py::test_topk_runs_rtl_and_writes_json",
    # its module fixture runs the DRAM benchmark on MiniLM and SmolLM2 (5 minutes)
    "tests/test_bench_dram.py",
)


@pytest.fixture
def seed():
    """The seed of a randomized test: deterministic (2021) unless SPATTEN_SEED is set; printed."""
    return pick_seed()


def slow_entry(nodeid: str) -> str | None:
    """The entry of `SLOW_TESTS` that names the test `nodeid`, or None."""
    for entry in SLOW_TESTS:
        if nodeid == entry or nodeid.startswith((entry + "[", entry + "::")):
            return entry
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if slow_entry(item.nodeid) is not None:
            item.add_marker(pytest.mark.slow)
