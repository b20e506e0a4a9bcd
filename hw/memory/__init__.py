"""The memory side and the core: `core.Core` (fetch unit + query pipeline, two head groups in
flight), the DRAM plane readers and arbiter (`fetch`), and the core's parts: job slots, intake,
K LSB / V prefetch scans, kept rows, run merge, query rows, job runner."""
