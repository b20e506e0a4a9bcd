"""`make demo` / `spatten demo`: the main job, end to end.

1. emit the top-k engine's Verilog (default configuration);
2. run it in Verilator on a sample (a softmax-like row of 1024 scores, k = 256, exact and
   statistical) and check every selected index, the threshold and the cycle counts against the
   golden model;
3. build the ULX3S-85F bitstream and read Fmax and utilization;
4. print a short summary (and write it to build/demo/summary.json).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from spatten.config import preset


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


def main(skip_synth: bool = False) -> int:
    from spatten.golden import topk as golden
    from spatten.hw.tops import make_top
    from spatten.sim.infra.runner import emit_verilog
    from spatten.sim.testbenches.tb_topk import run_topk

    cfg = preset("default")
    t = cfg.topk
    steps = 3 if skip_synth else 4
    summary = {"config": cfg.name, "lanes": t.lanes, "value_width": t.value_width,
               "capacity": t.capacity}
    t0 = time.time()

    _step(1, steps, "emitting Verilog of the top-k engine")
    v = emit_verilog(make_top("topk", cfg), "topk", Path("build/verilog"))
    summary["verilog"] = {"path": str(v), "kib": round(v.stat().st_size / 1024)}
    print(f"      {v} ({summary['verilog']['kib']} KiB)")

    _step(2, steps, "running it in Verilator on 1024 attention-like scores, k = 256 "
          "(the first build compiles the C++ model: about a minute)")
    scores = sample_scores(t.capacity, t)
    k = t.capacity // 4
    res = run_topk(t, [{"values": scores, "k": k, "mode": "exact"},
                       {"values": scores, "k": k, "mode": "statistical"}], purpose="demo")
    ref = golden.select(t, scores, k)
    model = golden.cycle_model(t, scores, k)
    exact = res[0]
    match = (exact["indices"] == ref.indices.tolist() and exact["threshold"] == ref.threshold
             and (exact["select_cycles"], exact["total_cycles"]) == (model["select"],
                                                                    model["total"]))
    sref = golden.select_statistical(t, scores, k)
    smatch = res[1]["indices"] == sref.indices.tolist()
    nP = t.capacity / t.lanes
    summary["topk"] = {
        "n": t.capacity, "k": k, "golden_match": bool(match), "threshold": exact["threshold"],
        "select_cycles": exact["select_cycles"], "total_cycles": exact["total_cycles"],
        "select_per_nP": round(exact["select_cycles"] / nP, 3),
        "statistical": {"selected": len(res[1]["indices"]), "golden_match": bool(smatch),
                        "select_cycles": res[1]["select_cycles"]},
    }
    print(f"      exact: {len(exact['indices'])} selected, threshold {exact['threshold']}, "
          f"select {exact['select_cycles']} cycles ({exact['select_cycles'] / nP:.2f} n/P), "
          f"total {exact['total_cycles']}: golden {'MATCH' if match else 'MISMATCH'}")
    print(f"      statistical: {len(res[1]['indices'])} selected (k = {k}), select "
          f"{res[1]['select_cycles']} cycles: golden {'MATCH' if smatch else 'MISMATCH'}")

    ok = match and smatch
    if not skip_synth:
        from spatten.fpga.build import build

        _step(3, steps, "building the ULX3S-85F bitstream (yosys + nextpnr: several minutes)")
        out = Path("build/synth/ulx3s-85f-topk-default")
        rep = build("ulx3s-85f", lambda: make_top("topk", cfg), name="topk", out_dir=out,
                    config=cfg)
        fm = rep["fmax_mhz"].get("sync", {})
        summary["ulx3s-85f"] = {"fmax_mhz": fm, "utilization": rep["utilization"],
                                "bitstream": rep.get("bitstream")}
        print(f"      Fmax {fm.get('achieved', 0):.1f} MHz (target {fm.get('constraint', 0):.0f})"
              f", bitstream {rep.get('bitstream')}")

    _step(steps, steps, "summary")
    summary["seconds"] = round(time.time() - t0, 1)
    Path("build/demo").mkdir(parents=True, exist_ok=True)
    Path("build/demo/summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["topk"], indent=1))
    if "ulx3s-85f" in summary:
        u = summary["ulx3s-85f"]["utilization"]
        for cell in ("TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D"):
            if cell in u:
                print(f"      {cell:13} {u[cell]['used']:>6} / {u[cell]['available']}")
    print(f"done in {summary['seconds']} s: {'all checks passed' if ok else 'CHECKS FAILED'} "
          "(build/demo/summary.json)")
    return 0 if ok else 1
