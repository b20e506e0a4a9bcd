"""The pytest side of a unit's cocotb testbench: build the design, hand the testbench its
settings, run it, and read back its results. The one way every unit's testbench is run.

    from spatten.sim.infra.testbench import run_testbench

    res = run_testbench(lambda: QKTop(cfg), name="qk", tb_module="spatten.sim.testbenches.tb_qk",
                        config=cfg, settings={"seed": 7, "runs": 8}, sim="verilator")

`run_testbench` emits the Verilog of ``make_top()`` as module `name` (an unchanged file is not
rewritten, an unchanged build is reused) into a build folder of its own
(``build/sim/<name>-<tag>-<purpose>/<sim>``), writes `settings` (with ``config``: the fields of
`config`) as JSON, points ``SPATTEN_TB`` at that file and runs the testbench module's cocotb
tests; it raises `CocotbFailure` when one fails (unless ``check=False``). Inside the simulator
the testbench reads the same settings with `tb_settings()` (or `spatten.sim.infra.bench.tb_config`).

`run_testbench_jobs` is the testbench's job mode (for the command line and the benchmarks): the
same build, with ``jobs`` (and ``idle``/``stall``) in the settings, runs the testbench's
``run_jobs`` test, which writes one result per job with `write_results`; it returns those
results.

`pick_seed` is the seed of a randomized test: deterministic by default, printed, overridable
with ``SPATTEN_SEED``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from .runner import CocotbResult, emit_verilog, run_cocotb, sim_build_dir

__all__ = ["run_testbench", "run_testbench_jobs", "tb_settings", "write_results", "cfg_tag",
           "pick_seed", "DEFAULT_SEED", "SETTINGS_ENV"]

#: The environment variable that holds the path of the running testbench's settings file.
SETTINGS_ENV = "SPATTEN_TB"
#: The seed of every randomized test unless ``SPATTEN_SEED`` says otherwise.
DEFAULT_SEED = 2021


def cfg_tag(*configs) -> str:
    """A short file-name-safe tag that changes whenever any field of the dataclasses does."""
    fields = [dataclasses.asdict(c) for c in configs]
    return hashlib.sha1(json.dumps(fields if len(fields) > 1 else fields[0],
                                   sort_keys=True).encode()).hexdigest()[:10]


def pick_seed(default: int = DEFAULT_SEED) -> int:
    """The seed of a randomized test: ``SPATTEN_SEED`` when set, else `default`; printed (pytest
    shows it with a failure). Every test must pass for every seed."""
    s = int(os.environ.get("SPATTEN_SEED", default))
    print(f"seed={s}")
    return s


def tb_settings() -> dict:
    """Inside the simulator: the settings `run_testbench` passed ({} outside a run)."""
    path = os.environ.get(SETTINGS_ENV)
    return json.loads(Path(path).read_text()) if path else {}


def write_results(results) -> None:
    """Inside the simulator, in job mode: write `results` (JSON-able) where
    `run_testbench_jobs` reads them."""
    Path(tb_settings()["results"]).write_text(json.dumps(results))


def run_testbench(make_top: Callable, *, name: str, tb_module: str, config=None,
                  settings: dict | None = None, tag: str | None = None, sim: str = "verilator",
                  testcase=None, purpose: str = "selftest", check: bool = True) -> CocotbResult:
    """Build ``make_top()`` as Verilog module `name` and run the cocotb tests of `tb_module`
    (dotted name) on `sim`; returns the `CocotbResult`.

    config    a config dataclass: its fields go to the settings as ``config``; the build folder's
              tag defaults to `cfg_tag(config)`
    settings  the rest of the testbench's settings (JSON-able)
    tag       the build folder's tag (give one whenever `make_top` depends on more than `config`)
    testcase  a test name or list of names to run (default: every test of the module)
    purpose   the last part of the build folder's name (runs of one purpose share a build)
    check     raise `CocotbFailure` unless at least one test passed and none failed
    """
    settings = dict(settings or {})
    if config is not None:
        settings["config"] = dataclasses.asdict(config)
    if tag is None:
        if config is None:
            raise ValueError(f"{name}: give a tag (the build folder's) or a config to derive it")
        tag = cfg_tag(config)
    bdir = sim_build_dir(name, tag, purpose)
    verilog = emit_verilog(make_top(), name, bdir / "rtl")
    # one settings file per process: two runs sharing a build (a self-test and a job run, or two
    # sessions) must not read each other's settings
    settings_path = bdir / f"tb_settings-{sim}-{os.getpid()}.json"
    settings_path.write_text(json.dumps(settings))
    try:
        return run_cocotb(verilog=verilog, toplevel=name, test_module=tb_module, sim=sim,
                          build_dir=bdir / sim, testcase=testcase, check=check,
                          extra_env={SETTINGS_ENV: str(settings_path)})
    finally:
        settings_path.unlink(missing_ok=True)


def run_testbench_jobs(make_top: Callable, jobs: list, *, name: str, tb_module: str,
                       config=None, settings: dict | None = None, tag: str | None = None,
                       sim: str = "verilator", idle: float = 0.0, stall: float = 0.0,
                       purpose: str = "jobs") -> list:
    """Run `jobs` through the testbench's ``run_jobs`` test (input gaps with probability `idle`,
    output backpressure with probability `stall`) and return its results, one per job; the
    other arguments as for `run_testbench`."""
    tag = tag or cfg_tag(config)
    results = sim_build_dir(name, tag, purpose) / f"results-{sim}-{os.getpid()}.json"
    results.unlink(missing_ok=True)
    settings = {**(settings or {}), "jobs": jobs, "results": str(results), "idle": idle,
                "stall": stall}
    run_testbench(make_top, name=name, tb_module=tb_module, config=config, settings=settings,
                  tag=tag, sim=sim, testcase="run_jobs", purpose=purpose)
    try:
        return json.loads(results.read_text())
    finally:
        results.unlink(missing_ok=True)
