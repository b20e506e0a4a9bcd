"""Shared pytest configuration."""

import pytest

from spatten.sim.infra.testbench import pick_seed


def pytest_configure(config):
    # Real FPGA builds with the YoWASP tools (seconds each once their cache is warm).
    config.addinivalue_line(
        "markers", "synth: runs Yosys/nextpnr on a design (select with -m synth, skip with "
                   "-m 'not synth')")


@pytest.fixture
def seed():
    """The seed of a randomized test: deterministic (2021) unless SPATTEN_SEED is set; printed."""
    return pick_seed()
