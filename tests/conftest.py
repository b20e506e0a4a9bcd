"""Shared pytest configuration."""


def pytest_configure(config):
    # Real FPGA builds with the YoWASP tools (seconds each once their cache is warm).
    config.addinivalue_line(
        "markers", "synth: runs Yosys/nextpnr on a design (select with -m synth, skip with "
                   "-m 'not synth')")
