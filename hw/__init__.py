"""The RTL (Amaranth only): one folder a block of the accelerator.

- `common/`: building blocks used across the units (skid buffer, beat packer, zero eliminator,
  row streams, registered fan-out, the registered multiplier, the reciprocal, adder trees);
- `topk/`: the top-k engine and the radix-select core it shares with value pruning;
- `attention/`: the query pipeline (Q.K array, softmax, value pruning's selector, prob x V and
  the control that overlaps queries);
- `memory/`: the memory side (plane readers, DRAM arbiter, job slots, intake, scans) and the
  `Core` that joins it to the query pipeline;
- `tops.py`: the units that are emitted, simulated and built on their own, by name.
"""
