"""`spatten bench dram`'s cycle part: real head groups of MiniLM and SmolLM2 through the RTL of
the memory side and the query pipeline (`hw.memory.core.Core` behind the DRAM model, in cocotb),
each checked against `golden.progressive.run_group` (outputs and DRAM bytes).

Every group runs alone (one job in flight, the counters are its own) and then each model's groups
run back to back (two in flight: the next group's fetch overlaps this one's compute), at each of
`RTL_BANDWIDTHS` bytes per cycle, DRAM latency `RTL_LATENCY`, full precision and tau 0.2. The
traffic and quality study, which needs only the golden models, is `bench_dram`; its `run` calls
`bench_rtl` unless asked not to, and `rtl_table` prints what it measured.

Entry points: `bench_rtl(cfg, sim)`, `rtl_table(result)`, and `main(argv)` (command line:
``python -m spatten.sim.benchmarks.bench_dram_rtl --help``): the RTL part alone, a table on
stdout and ``build/bench/dram_rtl.json``. A few minutes (one Verilator build, then 24 jobs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spatten.config import Config, preset
from spatten.golden.attention import score_params
from spatten.golden.dram_image import ImageLayout, build_image
from spatten.golden.progressive import TENSORS, group_planes, run_group
from spatten.golden.quant import quantize

from .bench_dram import calibrate_smollm2, smollm2_missing

__all__ = ["RTL_BANDWIDTHS", "RTL_TAUS", "RTL_LATENCY", "bench_rtl", "rtl_table", "main"]


RTL_BANDWIDTHS = (16, 4)        # bytes per cycle of the simulated memory
RTL_TAUS = (None, 0.2)
RTL_MINILM = {"text": 2, "groups": ((0, 0), (3, 5), (5, 11))}     # (layer, head)
RTL_SMOL = {"text": 0, "position": 96, "groups": ((0, 0), (15, 1), (29, 2))}  # (layer, kv head)
RTL_LATENCY = 20                # cycles from a request to its first beat


def _rtl_groups(cfg: Config) -> list[dict]:
    """Real head groups (integers, score registers) to run through the RTL."""
    from spatten.golden import minilm as mm
    from spatten.golden.attention import fixed_point_attention

    att = cfg.attention
    groups = []
    stats = []
    model = mm.MiniLM()
    model.embed(mm.SAMPLE_TEXTS[RTL_MINILM["text"]],
                attention=fixed_point_attention(att, stats=stats))
    for layer, head in RTL_MINILM["groups"]:
        st = next(x for x in stats if x["layer"] == layer and x["head"] == head)
        groups.append({"model": "MiniLM", "layer": layer, "head": head, "k": st["k"],
                       "v": st["v"], "q": [st["q"]], "params": st["params"],
                       "queries": [(0, j) for j in range(st["q"].shape[0])]})
    if smollm2_missing() is None:
        from spatten.golden import smollm2 as sm

        model = sm.SmolLM2()
        scales = calibrate_smollm2(model, att.data_width)
        ids = model.tokenize(sm.SAMPLE_PROSE[RTL_SMOL["text"]])[:RTL_SMOL["position"] + 1]
        cache = sm.KVCache(capacity=ids.size)
        model.forward(ids[:-1], cache)
        seen = {}

        def grab(q, k, v, layer, g):
            if (layer, g) in RTL_SMOL["groups"]:
                seen[(layer, g)] = (q[:, 0, :].copy(), k.copy(), v.copy())
            return sm.float_attention(q, k, v, layer, g)

        model.forward(ids[-1:], cache, grab)
        W = att.data_width
        for layer, g in RTL_SMOL["groups"]:
            q, k, v = seen[(layer, g)]
            qs, ks, vs = scales["q"][layer], scales["k"][layer], scales["v"][layer]
            qi = quantize(q, W, qs)[0]
            groups.append({"model": "SmolLM2", "layer": layer, "head": g,
                           "k": quantize(k, W, ks)[0], "v": quantize(v, W, vs)[0],
                           "q": [qi[h:h + 1] for h in range(q.shape[0])],
                           "params": score_params(att, qs, ks, sm.HEAD_DIM),
                           "queries": [(h, 0) for h in range(q.shape[0])]})
    return groups


def bench_rtl(cfg: Config, sim: str = "verilator") -> dict:
    """Cycles of real head groups through the memory side and pipeline RTL at each of
    `RTL_BANDWIDTHS` (DRAM latency `RTL_LATENCY`), full precision and tau 0.2, each checked
    against `golden.progressive.run_group` (outputs and bytes): every group alone (one job in
    flight, the counters are its own), then each model's groups back to back (two in flight:
    the next group's fetch overlaps this one's compute)."""
    from ..testbenches.core_run import job_for_group, run_core

    mem = cfg.memory
    B = mem.beat_bytes
    groups = _rtl_groups(cfg)
    jobs, refs, meta = [], [], []
    tmp = Path("build/bench/rtl-images").resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    depth = 4096
    by_model = {}
    for grp in groups:
        by_model.setdefault(grp["model"], []).append(grp)
    for model, grps in by_model.items():
        # one image per model: its groups as layers 0, 1, ... (one K/V head each)
        n, d = grps[0]["k"].shape
        if any(g["k"].shape != (n, d) for g in grps):
            raise ValueError(f"{model}: the RTL groups must share n and d")
        hq = len(grps[0]["q"])
        m = max(a.shape[0] for g in grps for a in g["q"])
        layout = ImageLayout.from_config(cfg.attention, layers=len(grps), kv_heads=1,
                                         q_heads=hq, d=d, n_max=n, m_max=m,
                                         msb_bits=mem.msb_bits, beat_bytes=B, align=mem.align)
        qarr = np.zeros((len(grps), hq, m, d), dtype=np.int64)
        for li, g in enumerate(grps):
            for h, a in enumerate(g["q"]):
                qarr[li, h, :a.shape[0]] = a
        image = build_image(layout, np.stack([g["k"] for g in grps])[:, None],
                            np.stack([g["v"] for g in grps])[:, None], qarr)
        while depth * B < len(image):
            depth *= 2
        path = tmp / f"{model.lower()}.bin"
        path.write_bytes(image)
        surv = list(range(n))
        for tau in RTL_TAUS:
            per_group = []
            for li, g in enumerate(grps):
                planes = group_planes(layout, li, 0)
                ref = run_group(cfg, planes, g["k"], g["v"], list(qarr[li]), surv,
                                g["queries"], g["params"], tau=tau)
                per_group.append((g, planes, ref))
            for bw in RTL_BANDWIDTHS:
                for batch in [None] + [f"{model}-{tau}-{bw}"]:
                    for g, planes, ref in per_group:
                        job = job_for_group(cfg, layout, path, planes, surv, g["queries"],
                                            g["params"], tau=tau, latency=RTL_LATENCY,
                                            bytes_per_cycle=bw)
                        if batch:
                            job["batch"] = batch
                        jobs.append(job)
                        refs.append(ref)
                        meta.append({"model": model, "layer": g["layer"], "head": g["head"],
                                     "n": n, "d": d, "queries": len(g["queries"]),
                                     "tau": tau, "bytes_per_cycle": bw,
                                     "in_flight": 2 if batch else 1, "batch": batch})
    group_size = max(len(g["q"]) for g in groups)
    print(f"RTL: {len(jobs)} jobs through the memory side on {sim} (builds once, a few "
          f"minutes)...", file=sys.stderr, flush=True)
    results = run_core(cfg.replace(mem_group_size=group_size), jobs, depth_beats=depth, sim=sim)
    rows, batches = [], {}
    mults = cfg.attention.qk_mults + cfg.attention.pv_mults
    for job_meta, ref, res in zip(meta, refs, results, strict=True):
        d = job_meta["d"]
        by_tag = {t: row[:d] for t, row in zip(res["tags"], res["out"], strict=True)}
        out_ok = (res["error"] == "NONE"
                  and all(by_tag.get(j) == ref.out[j].tolist() for j in range(len(ref.out))))
        macs = len(ref.passes) * job_meta["n"] * d + sum(len(x) for x in ref.kept) * d
        want = {t: b for t, b in ref.dram_bytes(B).items() if t != "total"}
        if job_meta["batch"] is None:
            got = {t: res["beats"][t] * B for t in TENSORS}
            total = sum(got.values())
            rows.append({**job_meta, "cycles": res["cycles"], "memory_wait": res["memory_wait"],
                         "bytes": got, "total_bytes": total,
                         "refetched": int(ref.refetched.sum()),
                         "golden_match": bool(out_ok and got == want),
                         "memory_cycles": -(-total // job_meta["bytes_per_cycle"]),
                         "multiplier_utilization": macs / (mults * res["cycles"])})
            continue
        b = batches.setdefault(job_meta["batch"], {
            **{k: job_meta[k] for k in ("model", "n", "d", "queries", "tau",
                                        "bytes_per_cycle")},
            "groups": 0, "macs": 0, "want": {t: 0 for t in TENSORS}, "outputs_match": True,
            "stats": res["batch"]})
        b["groups"] += 1
        b["macs"] += macs
        b["outputs_match"] &= out_ok
        for t in TENSORS:
            b["want"][t] += want[t]
    summary = []
    for b in batches.values():
        st = b.pop("stats")
        got = {t: st["beats"][t] * B for t in TENSORS}
        total = sum(got.values())
        alone = sum(r["cycles"] for r in rows
                    if (r["model"], r["tau"], r["bytes_per_cycle"])
                    == (b["model"], b["tau"], b["bytes_per_cycle"]))
        summary.append({**{k: v for k, v in b.items() if k not in ("want", "macs",
                                                                    "outputs_match")},
                        "in_flight": 2, "cycles": st["cycles"], "cycles_alone": alone,
                        "memory_wait": st["memory_wait"], "bytes": got, "total_bytes": total,
                        "golden_match": bool(b["outputs_match"] and got == b["want"]),
                        "memory_cycles": -(-total // b["bytes_per_cycle"]),
                        "multiplier_utilization": b["macs"] / (mults * st["cycles"])})
    return {"latency": RTL_LATENCY, "bandwidths": list(RTL_BANDWIDTHS), "sim": sim,
            "rows": rows, "back_to_back": summary}


def _rtl_row(r: dict, first: list) -> str:
    """A row of the RTL tables: the `first` cells, then tau, bandwidth, bytes, cycles (and the
    groups' cycles alone, for a back-to-back row), floor, waits, utilization, golden."""
    cells = [*first, "-" if r["tau"] is None else r["tau"], r["bytes_per_cycle"],
             f"{r['total_bytes'] / 1024:.1f}", r["cycles"]]
    if "cycles_alone" in r:
        cells.append(r["cycles_alone"])
    waits = "/".join(str(r["memory_wait"][w]) for w in ("k", "q", "lsb", "v"))
    cells += [r["memory_cycles"], waits, f"{r['multiplier_utilization']:.0%}",
              "match" if r["golden_match"] else "MISMATCH"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def rtl_table(rtl: dict) -> str:
    lines = [f"RTL cycles (memory side + pipeline, DRAM latency {rtl['latency']} cycles; "
             f"memory-bound floor = bytes / bandwidth)", "",
             "Each head group alone (one job in flight):", "",
             "| model | layer | group | n | queries | tau | B/cycle | KiB read | cycles | "
             "floor | waits K/Q/LSB/V | util | golden |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_rtl_row(r, [r["model"], r["layer"], r["head"], r["n"], r["queries"]])
              for r in rtl["rows"]]
    if rtl.get("back_to_back"):
        lines += ["", "The same groups back to back (two in flight: the next group's fetch "
                  "overlaps this one's compute):", "",
                  "| model | groups | tau | B/cycle | KiB read | cycles | alone | floor | "
                  "waits K/Q/LSB/V | util | golden |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_rtl_row(r, [r["model"], r["groups"]]) for r in rtl["back_to_back"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry: ``python -m spatten.sim.benchmarks.bench_dram_rtl [--config NAME]
    [--sim verilator|icarus] [--json OUT]``."""
    ap = argparse.ArgumentParser(
        prog="bench_dram_rtl", description="Cycles of real MiniLM and SmolLM2 head groups "
        "through the memory side and pipeline RTL, checked against the golden model.")
    ap.add_argument("--config", default="default", help="configuration preset (default: default)")
    ap.add_argument("--sim", default="verilator", choices=("verilator", "icarus"))
    ap.add_argument("--json", metavar="OUT",
                    help="JSON output (default: build/bench/dram_rtl.json)")
    args = ap.parse_args(argv)
    result = bench_rtl(preset(args.config), args.sim)
    print(rtl_table(result))
    json_path = Path(args.json or "build/bench/dram_rtl.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    print(f"JSON: {json_path}")
    return 0 if all(r["golden_match"] for r in result["rows"] + result["back_to_back"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
