"""The memory side in simulation: `hw.memory.core.Core` with the DRAM model of `sim/dram.py` behind
it.

`CoreTop` is the simulation top (DRAM model + core); `core_selftest` builds it for a
configuration and runs the self-checking cocotb tests of `sim/tb_core.py` on Verilator.
"""

from __future__ import annotations

import dataclasses

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from spatten.config import Config

from ..infra.runner import CocotbResult
from ..infra.testbench import cfg_tag, run_testbench
from ..models.dram import DramModel

__all__ = ["CoreTop", "core_selftest", "run_core", "job_for_group", "TOPLEVEL"]

TOPLEVEL = "core_top"
TB = "spatten.sim.testbenches.tb_core"


class CoreTop(wiring.Component):
    """`Core` (ports of the same names) and a `DramModel` of ``depth_beats`` beats on its DRAM
    port; the model's ``load``, ``latency``, ``bytes_per_cycle``, ``stall`` and counters are
    ports ``dram_load``, ``dram_latency``, ... of this top."""

    def __init__(self, config: Config, *, depth_beats: int):
        from spatten.hw.memory.core import Core

        self.core = Core(config=config)
        mem = config.memory
        self.dram = DramModel(beat_bytes=mem.beat_bytes, depth_beats=depth_beats,
                              max_burst=mem.max_burst, max_outstanding=mem.max_outstanding,
                              addr_width=self.core.addr_width)
        members = {}
        for name, member in self.core.signature.members.items():
            if name in ("dram_req", "dram_resp"):
                continue
            members[name] = member
        for name in ("load", "latency", "bytes_per_cycle", "stall"):
            members[f"dram_{name}"] = self.dram.signature.members[name]
        for name in ("error", "requests", "bytes_served"):
            members[f"dram_{name}"] = self.dram.signature.members[name]
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.dram = dram = self.dram
        wiring.connect(m, core.dram_req, dram.req)
        wiring.connect(m, dram.resp, core.dram_resp)
        for name, member in self.core.signature.members.items():
            if name in ("dram_req", "dram_resp"):
                continue
            mine, theirs = getattr(self, name), getattr(core, name)
            if member.is_port:
                if member.flow == In:
                    m.d.comb += theirs.eq(mine)
                else:
                    m.d.comb += mine.eq(theirs)
            else:
                if member.flow == In:
                    wiring.connect(m, wiring.flipped(mine), theirs)
                else:
                    wiring.connect(m, theirs, wiring.flipped(mine))
        wiring.connect(m, wiring.flipped(self.dram_load), dram.load)
        for name in ("latency", "bytes_per_cycle", "stall"):
            m.d.comb += getattr(dram, name).eq(getattr(self, f"dram_{name}"))
        for name in ("error", "requests", "bytes_served"):
            m.d.comb += getattr(self, f"dram_{name}").eq(getattr(dram, name))
        return m


def core_selftest(config: Config, *, depth_beats: int = 2048, seed: int = 1,
                  sim: str = "verilator", testcase=None) -> CocotbResult:
    """Build `CoreTop` and run the tests of `sim/tb_core.py`; raises `CocotbFailure` on a
    failure."""
    settings = {"config": dataclasses.asdict(config.attention),
                "memory": dataclasses.asdict(config.memory),
                "depth_beats": depth_beats, "seed": seed}
    tag = cfg_tag(config.attention) + "-" + cfg_tag(config.memory) + f"-{depth_beats}"
    return run_testbench(lambda: CoreTop(config, depth_beats=depth_beats),
                         name=TOPLEVEL, tag=tag, tb_module=TB, settings=settings, sim=sim,
                         testcase=testcase, purpose="rtl")


def run_core(config: Config, jobs: list[dict], *, depth_beats: int, sim: str = "verilator",
             idle: float = 0.0, stall: float = 0.0) -> list[dict]:
    """Run `jobs` through `CoreTop` (see `tb_core.run_jobs` for the job and result fields;
    ``image`` is the path of the DRAM image file; ``config.memory.group_size`` query heads a
    group); one result dict per job."""
    import json
    import os

    from ..infra.runner import sim_build_dir

    tag = cfg_tag(config.attention) + "-" + cfg_tag(config.memory) + f"-{depth_beats}"
    bdir = sim_build_dir(TOPLEVEL, tag, "rtl")
    results = bdir / f"results-{sim}-{os.getpid()}.json"
    results.unlink(missing_ok=True)
    settings = {"config": dataclasses.asdict(config.attention),
                "memory": dataclasses.asdict(config.memory),
                "depth_beats": depth_beats, "jobs": jobs, "results": str(results),
                "idle": idle, "stall": stall}
    run_testbench(lambda: CoreTop(config, depth_beats=depth_beats),
                  name=TOPLEVEL, tag=tag, tb_module=TB, settings=settings, sim=sim,
                  testcase="run_jobs", purpose="rtl")
    try:
        return json.loads(results.read_text())
    finally:
        results.unlink(missing_ok=True)


def job_for_group(config: Config, layout, image_path, planes, survivors, queries, params, *,
                  k_v=None, renorm=False, tau=None, fill="mid", latency=1,
                  bytes_per_cycle=None) -> dict:
    """A `run_core` job for one head group of an image: `planes` from
    `golden.progressive.group_planes`, survivors and queries as `golden.progressive.run_group`
    takes them, `params` the score scaling."""
    from spatten.golden.progressive import tau_fixed

    n = len(survivors)
    return {
        "image": str(image_path), "n": n, "n_stored": layout.n_max,
        "k_msb_base": planes.k_msb.base, "k_lsb_base": planes.k_lsb.base,
        "v_base": planes.v.base, "q_base": [p.base for p in planes.q],
        "d_log2": layout.d.bit_length() - 1, "k_v": n if k_v is None else int(k_v),
        "renorm": int(bool(renorm)), "shift": params.shift, "scale": params.scale,
        "post_shift": params.post_shift, "pq": int(tau is not None),
        "tau": 0 if tau is None else tau_fixed(tau, config.attention.prob_bits),
        "fill_mid": int(fill == "mid"), "survivors": [int(x) for x in survivors],
        "queries": [[int(h), int(r)] for h, r in queries], "latency": int(latency),
        "bytes_per_cycle": int(bytes_per_cycle or config.memory.beat_bytes),
    }
