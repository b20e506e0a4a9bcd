"""Run the query pipeline's RTL in a cocotb simulation (Verilator or Icarus).

`run_attention` emits the Verilog of `Attention` for a configuration (unchanged files and builds
are reused), runs `sim/tb_attention.py` in job mode and returns, per job, what the RTL produced:
outputs, probabilities, row maxima, cycles and multiply-accumulates, status.
`attention_selftest` runs the testbench's self-checking tests (tests/test_attention.py).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from spatten.config import AttentionConfig

from ..infra.runner import CocotbResult, sim_build_dir
from ..infra.testbench import cfg_tag, unit_selftest

__all__ = ["run_attention", "attention_selftest", "make_top", "TOPLEVEL", "job_from_arrays"]

TOPLEVEL = "attention"
TB = "spatten.sim.testbenches.tb_attention"


def make_top(cfg: AttentionConfig, msb_bits: int = 8):
    from spatten.config import MemoryConfig
    from spatten.hw.attention import Attention

    return Attention(config=cfg, memory=MemoryConfig(msb_bits=msb_bits))


def job_from_arrays(q, k, v, params, k_v=None, renorm=False) -> dict:
    """A job for `run_attention` from integer arrays and `golden.attention.ScoreParams`."""
    q, k, v = (np.asarray(x, dtype=np.int64) for x in (q, k, v))
    return {"q": q.tolist(), "k": k.tolist(), "v": v.tolist(), "n": int(k.shape[0]),
            "d": int(q.shape[1]), "params": [int(params.shift), int(params.scale),
                                             int(params.post_shift)],
            "k_v": None if k_v is None else int(k_v), "renorm": bool(renorm)}


def run_attention(cfg: AttentionConfig, jobs: list[dict], *, sim: str = "verilator",
                  idle: float = 0.0, stall: float = 0.0, purpose: str = "rtl") -> list[dict]:
    """Run `jobs` (see `job_from_arrays`) through the RTL; one result dict per job."""
    bdir = sim_build_dir(TOPLEVEL, cfg_tag(cfg), purpose)
    results = bdir / f"results-{sim}-{os.getpid()}.json"
    if results.exists():
        results.unlink()
    settings = {"config": dataclasses.asdict(cfg), "jobs": jobs, "results": str(results),
                "idle": idle, "stall": stall}
    unit_selftest(lambda: make_top(cfg), name=TOPLEVEL, tag=cfg_tag(cfg), tb_module=TB,
                  settings=settings, sim=sim, testcase="run_jobs", purpose=purpose)
    try:
        return json.loads(results.read_text())
    finally:
        results.unlink(missing_ok=True)


def attention_selftest(cfg: AttentionConfig, *, sim: str, seed: int, random_runs: int = 6,
                       testcase=None, msb_bits: int = 8) -> CocotbResult:
    """Run the self-checking tests of tb_attention.py (K split into ``msb_bits`` + the rest);
    raises `CocotbFailure` when one fails."""
    settings = {"config": dataclasses.asdict(cfg), "seed": seed, "random_runs": random_runs,
                "msb_bits": msb_bits}
    tag = cfg_tag(cfg) + ("" if msb_bits == 8 else f"-msb{msb_bits}")
    return unit_selftest(lambda: make_top(cfg, msb_bits), name=TOPLEVEL, tag=tag, tb_module=TB,
                         settings=settings, sim=sim, testcase=testcase, purpose="rtl")
