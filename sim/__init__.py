"""The simulation side: joins `hw/` and `golden/` (see the package folders).

- `infra`: the machinery every test uses: `runner` (Verilog emission, cocotb builds and runs),
  `testbench` (the pytest side of a unit's cocotb testbench), `bench` (its cocotb side),
  `streams` (cocotb stream drivers and monitors), `amaranth_tb` (stream tests in the Amaranth
  simulator), `formal` (SymbiYosys checks).
- `models`: simulation-only hardware: `dram` (the DRAM model).
- `testbenches`: one cocotb testbench per unit (`tb_<unit>.py`) with its simulation top.
- `benchmarks`: `bench_*.py`, the programs behind `spatten bench`.
"""
