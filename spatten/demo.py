"""`make demo` / `spatten demo`: the main job, end to end.

1. emit the top-k engine's Verilog (default configuration);
2. run it in Verilator on a sample (a softmax-like row of 1024 scores, k = 256, exact and
   statistical) and check every selected index, the threshold and the cycle counts against the
   golden model;
3. build the ULX3S-85F bitstream and read Fmax and utilization;
4. print every check as passed, FAILED or MISSED with its figures, and a summary line naming
   what did not pass (also written to build/demo/summary.json: each check with ``met`` and the
   figures, and ``all_met``).

Two kinds of check, and the exit status:
- an RTL check (the selection and threshold against the golden model, the cycle counts against
  the cycle model) that does not hold is a bug: FAILED, and the demo exits with status 1;
- a timing target (Fmax of a build against its clock constraint) not reached is a result to
  report, not a bug: MISSED, in the checks and the summary line, and the exit status stays 0.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spatten.config import preset

__all__ = ["Check", "finish", "main", "rtl_checks", "sample_scores", "timing_check"]

#: The kinds of check: "rtl" (bit or cycle exactness; a miss fails the demo) and "target" (a
#: goal such as a clock frequency; a miss is reported, the demo still succeeds).
KINDS = ("rtl", "target")


@dataclass(frozen=True)
class Check:
    """One check of the demo and its outcome.

    name      what was checked ("ulx3s-85f timing")
    kind      "rtl" or "target" (`KINDS`)
    met       whether it holds
    achieved  the figure measured (a number or a small dict; None when there is none)
    target    the figure it is compared with
    detail    the figures for a person ("Fmax 91.7 MHz, target 100.0 MHz")
    """

    name: str
    kind: str
    met: bool
    achieved: object
    target: object
    detail: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not isinstance(self.met, bool):
            raise TypeError(f"met must be a bool, not {self.met!r}")

    @property
    def verdict(self) -> str:
        """"passed", or "FAILED" (an RTL check) / "MISSED" (a target) when it does not hold."""
        if self.met:
            return "passed"
        return "FAILED" if self.kind == "rtl" else "MISSED"

    def line(self) -> str:
        return f"      [{self.verdict}] {self.name}: {self.detail}"


def _step(i, total, text):
    print(f"[{i}/{total}] {text}", flush=True)


def sample_scores(n: int, cfg, seed: int = 7) -> np.ndarray:
    """Attention-like scores: a few peaked keys over a noisy background, scaled to the width."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, n)
    logits[rng.choice(n, 8, replace=False)] += rng.uniform(3, 6, 8)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return np.round(p / p.max() * cfg.value_max).astype(np.int64)


def rtl_checks(cfg, scores, k: int, results: list[dict]) -> list[Check]:
    """The RTL checks of the top-k engine's two runs (`results`: exact, then statistical, as
    `run_topk` returns them) against the golden model and its cycle model."""
    from spatten.golden import topk as golden

    checks = []
    cycles, model_cycles = {}, {}
    for mode, res in zip(("exact", "statistical"), results, strict=True):
        ref = (golden.select if mode == "exact" else golden.select_statistical)(cfg, scores, k)
        got = {"selected": len(res["indices"]), "threshold": res["threshold"]}
        want = {"selected": int(ref.indices.size), "threshold": int(ref.threshold)}
        same = res["indices"] == ref.indices.tolist() and got == want
        if same:
            detail = (f"the {got['selected']} indices and the threshold {got['threshold']} equal "
                      "the golden model's")
        else:
            missing = len(set(ref.indices.tolist()) - set(res["indices"]))
            detail = (f"{got['selected']} selected, threshold {got['threshold']}; golden "
                      f"{want['selected']}, {want['threshold']}; {missing} of the golden "
                      "indices not selected")
        checks.append(Check(f"{mode} top-k vs golden model", "rtl", same, got, want, detail))
        model = golden.cycle_model(cfg, scores, k, mode)
        cycles[mode] = {"select": res["select_cycles"], "total": res["total_cycles"]}
        model_cycles[mode] = {"select": model["select"], "total": model["total"]}
    same = cycles == model_cycles
    shown = "; ".join(f"{mode} select {c['select']}, total {c['total']}"
                      for mode, c in cycles.items())
    detail = shown + (", as the cycle model" if same else "; cycle model " + "; ".join(
        f"{mode} {c['select']}, {c['total']}" for mode, c in model_cycles.items()))
    checks.append(Check("cycle counts vs cycle model", "rtl", same, cycles, model_cycles, detail))
    return checks


def timing_check(report: dict) -> Check:
    """The timing target of one FPGA build (the dict `spatten.fpga.build.build` returns): the
    Fmax of its sync clock against the clock nextpnr was asked to meet."""
    name = f"{report['board']} {report['top']} timing"
    fmax = report.get("fmax_mhz", {}).get("sync")
    target = fmax["constraint"] if fmax else report["target_mhz"]
    if fmax is None:
        why = "not routed" if report.get("routed") is False else "no Fmax for the sync clock"
        return Check(name, "target", False, None, target, f"{why}, target {target:.1f} MHz")
    met = report.get("timing_met") is True and fmax["achieved"] >= fmax["constraint"]
    return Check(name, "target", met, fmax["achieved"], target,
                 f"Fmax {fmax['achieved']:.1f} MHz, target {target:.1f} MHz")


def finish(checks: list[Check], summary: dict, out_dir: Path) -> int:
    """Print every check and the summary line, write `out_dir`/summary.json (`summary` with
    the checks and ``all_met``); return the exit status: 1 if an RTL check failed, else 0."""
    failed = [c for c in checks if not c.met and c.kind == "rtl"]
    missed = [c for c in checks if not c.met and c.kind == "target"]
    summary["checks"] = [asdict(c) for c in checks]
    summary["all_met"] = not failed and not missed
    status = 1 if failed else 0
    summary["exit_status"] = status
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print("checks:")
    for c in checks:
        print(c.line())
    passed = len(checks) - len(failed) - len(missed)
    head = f"done in {summary['seconds']} s: "
    if summary["all_met"]:
        print(f"{head}all {len(checks)} checks passed ({path})")
        return status
    parts = [f"{passed} of {len(checks)} checks passed"]
    if failed:
        parts.append("FAILED: " + "; ".join(f"{c.name} ({c.detail})" for c in failed))
    if missed:
        parts.append("MISSED: " + "; ".join(f"{c.name} ({c.detail})" for c in missed))
    if not failed:
        parts.append("the RTL checks all passed")
    print(head + ", ".join(parts) + f" ({path})")
    return status


def main(skip_synth: bool = False, build_dir: Path | str = "build") -> int:
    """Run the demo with its outputs under `build_dir`; return the exit status (module
    docstring)."""
    from spatten.hw.tops import make_top
    from spatten.sim.infra.runner import emit_verilog
    from spatten.sim.testbenches.tb_topk import run_topk

    build_dir = Path(build_dir)
    cfg = preset("default")
    t = cfg.topk
    steps = 3 if skip_synth else 4
    summary = {"config": cfg.name, "lanes": t.lanes, "value_width": t.value_width,
               "capacity": t.capacity}
    t0 = time.time()

    _step(1, steps, "emitting Verilog of the top-k engine")
    v = emit_verilog(make_top("topk", cfg), "topk", build_dir / "verilog")
    summary["verilog"] = {"path": str(v), "kib": round(v.stat().st_size / 1024)}
    print(f"      {v} ({summary['verilog']['kib']} KiB)")

    _step(2, steps, "running it in Verilator on 1024 attention-like scores, k = 256 "
          "(the first build compiles the C++ model: about a minute)")
    scores = sample_scores(t.capacity, t)
    k = t.capacity // 4
    res = run_topk(t, [{"values": scores, "k": k, "mode": "exact"},
                       {"values": scores, "k": k, "mode": "statistical"}], purpose="demo")
    checks = rtl_checks(t, scores, k, res)
    exact, stat = res
    nP = t.capacity / t.lanes
    summary["topk"] = {
        "n": t.capacity, "k": k, "golden_match": checks[0].met and checks[2].met,
        "threshold": exact["threshold"], "select_cycles": exact["select_cycles"],
        "total_cycles": exact["total_cycles"],
        "select_per_nP": round(exact["select_cycles"] / nP, 3),
        "statistical": {"selected": len(stat["indices"]),
                        "golden_match": checks[1].met and checks[2].met,
                        "select_cycles": stat["select_cycles"]},
    }
    print(f"      exact: {len(exact['indices'])} selected, threshold {exact['threshold']}, "
          f"select {exact['select_cycles']} cycles ({exact['select_cycles'] / nP:.2f} n/P), "
          f"total {exact['total_cycles']}")
    print(f"      statistical: {len(stat['indices'])} selected (k = {k}), select "
          f"{stat['select_cycles']} cycles")

    if not skip_synth:
        from spatten.fpga.build import build

        _step(3, steps, "building the ULX3S-85F bitstream (yosys + nextpnr: several minutes)")
        out = build_dir / "synth" / "ulx3s-85f-topk-default"
        rep = build("ulx3s-85f", lambda: make_top("topk", cfg), name="topk", out_dir=out,
                    config=cfg)
        checks.append(timing_check(rep))
        summary["ulx3s-85f"] = {"fmax_mhz": rep["fmax_mhz"].get("sync", {}),
                                "utilization": rep["utilization"],
                                "bitstream": rep.get("bitstream")}
        print(f"      {checks[-1].detail}, bitstream {rep.get('bitstream')}")

    _step(steps, steps, "summary")
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary["topk"], indent=1))
    if "ulx3s-85f" in summary:
        u = summary["ulx3s-85f"]["utilization"]
        for cell in ("TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D"):
            if cell in u:
                print(f"      {cell:13} {u[cell]['used']:>6} / {u[cell]['available']}")
    return finish(checks, summary, build_dir / "demo")
