"""Run one unit's cocotb testbench: the shared plumbing of every unit test on Verilator/Icarus.

`unit_selftest` emits the Verilog of a component (unchanged files are not rewritten, unchanged
builds are reused), writes the testbench's settings as JSON, points ``SPATTEN_TB`` at them, and
runs the testbench module's cocotb tests. A testbench reads its settings with `tb_settings()`.

    res = unit_selftest(make_top, name="qk", tag=cfg_tag(cfg),
                        tb_module="spatten.sim.testbenches.tb_qk",
                        settings={"config": dataclasses.asdict(cfg), "seed": 7}, sim="verilator")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from .runner import CocotbResult, emit_verilog, run_cocotb, sim_build_dir

__all__ = ["unit_selftest", "tb_settings", "cfg_tag"]

ENV = "SPATTEN_TB"


def cfg_tag(cfg) -> str:
    """A short file-name-safe tag that changes whenever any field of the dataclass `cfg` does."""
    fields = dataclasses.asdict(cfg)
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def tb_settings() -> dict:
    """The settings `unit_selftest` passed to the running testbench ({} outside a run)."""
    path = os.environ.get(ENV)
    return json.loads(Path(path).read_text()) if path else {}


def unit_selftest(make_top: Callable, *, name: str, tag: str, tb_module: str, settings: dict,
                  sim: str = "verilator", testcase=None, purpose: str = "selftest",
                  check: bool = True) -> CocotbResult:
    """Build ``make_top()`` as Verilog module ``name`` and run ``tb_module``'s cocotb tests on
    ``sim``; raises `CocotbFailure` when a test fails (unless ``check=False``)."""
    bdir = sim_build_dir(name, tag, purpose)
    verilog = emit_verilog(make_top(), name, bdir / "rtl")
    # one settings file per process: two runs sharing a build (a self-test and a job run, or two
    # sessions) must not read each other's settings
    settings_path = bdir / f"tb_settings-{sim}-{os.getpid()}.json"
    settings_path.write_text(json.dumps(settings))
    try:
        return run_cocotb(verilog=verilog, toplevel=name, test_module=tb_module, sim=sim,
                          build_dir=bdir / sim, testcase=testcase, check=check,
                          extra_env={ENV: str(settings_path)})
    finally:
        settings_path.unlink(missing_ok=True)
