"""Run the top-k engine's RTL in a cocotb simulation (Verilator or Icarus).

`run_topk` emits the Verilog of `TopK` for a configuration (once; unchanged files are not
rewritten, unchanged builds are reused), runs `sim/tb_topk.py` in its job mode and returns, per
job, what the engine produced: selected indices and values, threshold, cycle counters, status.
`topk_selftest` runs the self-checking tests of the same testbench (used by tests/test_topk.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from spatten.config import TopKConfig

from ..infra.runner import CocotbResult, emit_verilog, run_cocotb, sim_build_dir

__all__ = ["run_topk", "topk_selftest", "build_dir_for"]

TOPLEVEL = "topk"
TB = "spatten.sim.testbenches.tb_topk"


def _tag(cfg: TopKConfig) -> str:
    f = dataclasses.asdict(cfg)
    short = f"p{cfg.lanes}w{cfg.value_width}c{cfg.capacity}d{cfg.digit_bits}"
    return short + "-" + hashlib.sha1(json.dumps(f, sort_keys=True).encode()).hexdigest()[:6]


def build_dir_for(cfg: TopKConfig, sim: str, purpose: str = "") -> Path:
    return sim_build_dir("topk", _tag(cfg) + (f"-{purpose}" if purpose else ""), sim)


def _verilog(cfg: TopKConfig, out_dir: Path) -> Path:
    from spatten.hw.topk import TopK

    return emit_verilog(TopK(config=cfg), TOPLEVEL, out_dir)


def _settings_file(bdir: Path, settings: dict) -> Path:
    path = bdir / "tb_settings.json"
    path.write_text(json.dumps(settings))
    return path


def run_topk(cfg: TopKConfig, jobs: list[dict], *, sim: str = "verilator", idle: float = 0.0,
             stall: float = 0.0, purpose: str = "jobs") -> list[dict]:
    """Run `jobs` ({"values": [...], "k": int, "mode": "exact"|"statistical"}) through the RTL;
    return one dict per job (indices, values, threshold, select_cycles, total_cycles, error,
    ...)."""
    bdir = build_dir_for(cfg, sim, purpose)
    bdir.mkdir(parents=True, exist_ok=True)
    verilog = _verilog(cfg, bdir / "rtl")
    results = bdir / "results.json"
    if results.exists():
        results.unlink()
    clean_jobs = [{"values": [int(x) for x in j["values"]], "k": int(j["k"]),
                   "mode": j.get("mode", "exact")} for j in jobs]
    settings = {"config": dataclasses.asdict(cfg), "jobs": clean_jobs, "results": str(results),
                "idle": idle, "stall": stall}
    run_cocotb(verilog=verilog, toplevel=TOPLEVEL, test_module=TB, sim=sim,
               build_dir=bdir / sim, extra_env={"TOPK_TB": str(_settings_file(bdir, settings))},
               testcase="run_jobs")
    return json.loads(results.read_text())


def topk_selftest(cfg: TopKConfig, *, sim: str, seed: int, random_runs: int = 12,
                  testcase=None) -> CocotbResult:
    """Run the self-checking tests of tb_topk.py; raises `CocotbFailure` when one fails."""
    bdir = build_dir_for(cfg, sim, "selftest")
    bdir.mkdir(parents=True, exist_ok=True)
    verilog = _verilog(cfg, bdir / "rtl")
    settings = {"config": dataclasses.asdict(cfg), "seed": seed, "random_runs": random_runs}
    return run_cocotb(verilog=verilog, toplevel=TOPLEVEL, test_module=TB,
                      sim=sim, build_dir=bdir / sim, testcase=testcase,
                      extra_env={"TOPK_TB": str(_settings_file(bdir, settings))})
