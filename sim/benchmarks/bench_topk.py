"""`spatten bench topk`: selection and total cycles of the top-k engine's RTL against a model of
the paper's random-pivot engine, on the same seeded random inputs.

For n in {64, 256, 1024, 4096} and k in {n/8, n/4, n/2} at P = 16 (the `large` configuration,
capacity 4096), `trials` uniformly random 16-bit inputs each (and normal and softmax-like inputs
at k = n/4): the RTL's own cycle counters
(Verilator), the golden cycle model's prediction (must agree exactly), and the random-pivot
model (ceil(m/P) + 3 cycles a round). Also the statistical mode's count accuracy. Prints a
table, writes JSON and a plot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from spatten.config import preset
from spatten.golden import topk as golden

from ..testbenches.tb_topk import run_topk

NS = (64, 256, 1024, 4096)
K_FRACTIONS = (8, 4, 2)
# Other input distributions, at k = n/4: where radix select needs more passes (softmax-like
# rows crowd into the low bins) and where the statistical mode's Gaussian model holds (normal).
OTHER_DISTS = (("normal", 1024), ("normal", 4096), ("softmax", 1024), ("softmax", 4096))


def draw(rng, dist: str, n: int, cfg) -> np.ndarray:
    """n values of a distribution, as integers of the configuration's width."""
    lo, hi = cfg.value_min, cfg.value_max
    if dist == "uniform":
        return rng.integers(lo, hi + 1, n)
    if dist == "normal":
        return np.clip(np.round(rng.normal(0, hi / 6, n)), lo, hi).astype(np.int64)
    if dist == "softmax":   # a softmax row of normal logits, scaled so its maximum is value_max
        p = np.exp(rng.normal(0, 2.0, n))
        return np.round(p / p.max() * hi).astype(np.int64)
    raise ValueError(f"unknown distribution {dist!r}")


def _progress(total, desc):
    from spatten.progress import progress  # a live line on a terminal, few lines in a log

    return progress(total, desc, unit="point")


def measure(*, trials: int, seed: int, sim: str, stat_trials: int | None = None) -> dict:
    cfg = preset("large").topk
    P = cfg.lanes
    rng = np.random.default_rng(seed)
    stat_trials = stat_trials if stat_trials is not None else max(5, trials // 5)
    points = []
    grid = [("uniform", n, n // frac) for n in NS for frac in K_FRACTIONS]
    grid += [(dist, n, n // 4) for dist, n in OTHER_DISTS]
    bar = _progress(len(grid), "top-k RTL")
    t0 = time.time()
    for dist, n, k in grid:
        inputs = [draw(rng, dist, n, cfg) for _ in range(trials)]
        jobs = [{"values": v, "k": k, "mode": "exact"} for v in inputs]
        stat_jobs = [{"values": v, "k": k, "mode": "statistical"}
                     for v in inputs[:stat_trials]]
        res = run_topk(cfg, jobs + stat_jobs, sim=sim, purpose="bench")
        exact, stat = res[:trials], res[trials:]
        sel = np.array([r["select_cycles"] for r in exact], float)
        tot = np.array([r["total_cycles"] for r in exact], float)
        model = [golden.cycle_model(cfg, v, k) for v in inputs]
        mismatch = sum((m["select"], m["total"]) != (r["select_cycles"], r["total_cycles"])
                       for m, r in zip(model, exact, strict=True))
        wrong = sum(r["indices"] != golden.select(cfg, v, k).indices.tolist()
                    for r, v in zip(exact, inputs, strict=True))
        rnd = np.array([golden.random_pivot_cycles(v, k, P, rng) for v in inputs], float)
        st_sel = np.array([r["select_cycles"] for r in stat], float)
        st_cnt = np.array([len(r["indices"]) for r in stat], float)
        unit = n / P
        points.append({
            "dist": dist, "n": n, "k": k, "trials": trials,
            "select_mean": sel.mean(), "select_std": sel.std(),
            "total_mean": tot.mean(), "total_std": tot.std(),
            "select_per_nP": sel.mean() / unit, "select_per_nP_std": sel.std() / unit,
            "total_per_nP": tot.mean() / unit, "total_per_nP_std": tot.std() / unit,
            "random_pivot_mean": rnd.mean(), "random_pivot_std": rnd.std(),
            "random_pivot_per_nP": rnd.mean() / unit,
            "random_pivot_per_nP_std": rnd.std() / unit,
            "speedup_vs_random_pivot": rnd.mean() / sel.mean(),
            "model_mismatches": int(mismatch), "wrong_selections": int(wrong),
            "statistical": {"trials": len(stat), "select_mean": st_sel.mean(),
                            "count_over_k_mean": (st_cnt / k).mean(),
                            "count_over_k_std": (st_cnt / k).std()},
        })
        bar.update(1)
    bar.close()
    return {"benchmark": "topk", "config": "large", "lanes": P, "value_width": cfg.value_width,
            "capacity": cfg.capacity, "digit_bits": cfg.digit_bits, "seed": seed, "sim": sim,
            "inputs": "uniform: random integers over the full 16-bit range; normal: sigma = "
                      "max/6; softmax: a softmax row of N(0, 2) logits scaled to the maximum",
            "seconds": round(time.time() - t0, 1), "points": points}


def table(result: dict) -> str:
    rows = [
        "top-k engine, P = {lanes}, {value_width}-bit values, radix digits of {digit_bits} bits "
        "({sim}; {n} inputs per point, seed {seed})".format(
            n=result["points"][0]["trials"], **result),
        f"{'dist':>8} {'n':>5} {'k':>5} | {'select (n/P)':>14} {'total (n/P)':>14} | "
        f"{'random pivot (n/P)':>19} {'speedup':>7} | {'model':>5} | {'stat k~':>8}",
    ]
    rows.append("-" * len(rows[1]))
    for p in result["points"]:
        model = "exact" if p["model_mismatches"] == 0 else f"{p['model_mismatches']} off"
        rows.append(
            f"{p['dist']:>8} {p['n']:>5} {p['k']:>5} | "
            f"{p['select_per_nP']:>6.2f} +- {p['select_per_nP_std']:<4.2f}"
            f" {p['total_per_nP']:>6.2f} +- {p['total_per_nP_std']:<4.2f} | "
            f"{p['random_pivot_per_nP']:>10.2f} +- {p['random_pivot_per_nP_std']:<5.2f} "
            f"{p['speedup_vs_random_pivot']:>6.2f}x | "
            f"{model:>5} | "
            f"{p['statistical']['count_over_k_mean']:>7.2f}k")
    rows.append("select: cycles after the last input beat until the k-th value is known; total: "
                "first input beat to last output beat; model: RTL counters vs the golden cycle "
                "model; stat k~: items the statistical mode selects, over k.")
    return "\n".join(rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    labels = [f"{p['dist'][:4]}\nn={p['n']}\nk={p['k']}" for p in result["points"]]
    x = np.arange(len(labels))
    w = 0.27
    pts = result["points"]
    ax.bar(x - w, [p["select_per_nP"] for p in pts], w,
           yerr=[p["select_per_nP_std"] for p in pts], label="radix select (RTL)")
    ax.bar(x, [p["random_pivot_per_nP"] for p in pts], w,
           yerr=[p["random_pivot_per_nP_std"] for p in pts], label="random pivot (paper, model)")
    ax.bar(x + w, [p["total_per_nP"] for p in pts], w,
           yerr=[p["total_per_nP_std"] for p in pts], label="total latency (RTL)")
    ax.axhline(1.5, color="k", ls=":", lw=1, label="target 1.5 n/P")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("cycles / (n/P)")
    ax.set_title(f"Top-k selection cost, P = {result['lanes']}, 16-bit inputs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(*, trials=50, json_path=None, plot_path=None, sim="verilator", seed=2021) -> int:
    result = measure(trials=trials, seed=seed, sim=sim)
    print(table(result))
    jp = Path(json_path or "build/bench/topk.json")
    pp = Path(plot_path or "build/bench/topk.png")
    jp.parent.mkdir(parents=True, exist_ok=True)
    jp.write_text(json.dumps(result, indent=1))
    plot(result, pp)
    print(f"JSON: {jp}   plot: {pp}")
    bad = sum(p["model_mismatches"] + p["wrong_selections"] for p in result["points"])
    return 1 if bad else 0
