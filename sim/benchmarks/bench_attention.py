"""`spatten bench attention`: accuracy of the fixed-point attention path on the real MiniLM
encoder, and multiplier utilization of the query pipeline's RTL.

Accuracy (golden model, bit-exact with the RTL): the float MiniLM encoder runs the sample texts
and records every layer's and head's float q, k, v. Each head is quantized (12 bits, per-tensor
scale) and run through `golden.attention.attention`; against float attention on the same float
inputs we report the maximum and mean absolute probability error and the cosine of every output
row, per layer, without value pruning and with it (several kept fractions, with and without
renormalisation). Then the whole model runs with every layer's attention on the fixed-point path
and the sentence embeddings are compared with the float model's (cosine).

Utilization (RTL on Verilator): a whole head (m = n queries) at n = 32, 128, 512 and d = 64
and 32; useful multiply-accumulates (Q.K and prob x V) over ((M + Mv) x cycles), from the
pipeline's own counters, with the outputs checked against the golden model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from spatten.config import preset
from spatten.golden import attention as golden

KV_KEEP = (None, 0.5, 0.3, 0.1)
UTIL_NS = (32, 128, 512)
UTIL_DS = (64, 32)


def _float_softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _cos_rows(a, b):
    num = (a * b).sum(axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def _progress(total, desc):
    from spatten.progress import progress  # a live line on a terminal, few lines in a log

    return progress(total, desc)


def accuracy(cfg_name: str = "default", texts=None) -> dict:
    from spatten.golden.minilm import SAMPLE_TEXTS, MiniLM
    from spatten.golden.quant import quantize

    cfg = preset(cfg_name).attention
    model = MiniLM()
    texts = list(SAMPLE_TEXTS if texts is None else texts)
    settings = [(None, False)] + [(f, r) for f in KV_KEEP[1:] for r in (False, True)]
    layers = {}
    bar = _progress(len(texts) * (1 + len(settings)), "MiniLM accuracy")
    emb_cos = {str(s): [] for s in settings}
    tokens = []
    for text in texts:
        ids = model.tokenize(text)
        tokens.append(int(ids.size))
        hidden, records = model.forward(ids, record=True)
        ref_emb = model.embed(text)
        for layer, heads in enumerate(records):
            for rec in heads:
                q, k, v = rec["q"], rec["k"], rec["v"]
                n, d = k.shape
                qi, qs = quantize(q, cfg.data_width)
                ki, ks = quantize(k, cfg.data_width)
                vi, vs = quantize(v, cfg.data_width)
                params = golden.score_params(cfg, qs, ks, d)
                out_scale = vs / (1 << cfg.out_frac_bits)
                for keep, renorm in settings:
                    k_v = None if keep is None else max(1, int(round(keep * n)))
                    res = golden.attention(cfg, qi, ki, vi, params, k_v, renorm)
                    st = layers.setdefault((layer, str((keep, renorm))),
                                           {"perr_max": 0.0, "perr_sum": 0.0, "perr_count": 0,
                                            "fmt_max": 0.0, "quant_max": 0.0, "cos": [],
                                            "fmt_cos": []})
                    if keep is None:
                        # float attention on the quantized inputs: splits the error into that
                        # of 12-bit inputs and that of the datapath's own formats
                        pq = _float_softmax((qi * qs) @ (ki * ks).T / float(np.sqrt(d)))
                        oq = pq @ (vi * vs)
                        p = res.p / 65536.0
                        err = np.abs(p - rec["probs"])
                        st["perr_max"] = max(st["perr_max"], float(err.max()))
                        st["perr_sum"] += float(err.sum())
                        st["perr_count"] += err.size
                        st["fmt_max"] = max(st["fmt_max"], float(np.abs(p - pq).max()))
                        st["quant_max"] = max(st["quant_max"],
                                              float(np.abs(pq - rec["probs"]).max()))
                        st["fmt_cos"].extend(_cos_rows(res.out * out_scale, oq).tolist())
                    st["cos"].extend(_cos_rows(res.out * out_scale, rec["out"]).tolist())
        bar.update(1)
        for keep, renorm in settings:
            fn = golden.fixed_point_attention(cfg, keep, renorm)
            emb = model.embed(text, attention=fn)
            emb_cos[str((keep, renorm))].append(float(np.dot(emb, ref_emb)))
            bar.update(1)
    bar.close()
    rows = []
    for keep, renorm in settings:
        key = str((keep, renorm))
        per_layer = []
        for layer in range(len(records)):
            st = layers[(layer, key)]
            cos = np.array(st["cos"])
            base = keep is None
            per_layer.append({
                "layer": layer,
                "perr_max": st["perr_max"] if base else None,
                "perr_mean": st["perr_sum"] / st["perr_count"] if base else None,
                "perr_format_max": st["fmt_max"] if base else None,
                "perr_quant_max": st["quant_max"] if base else None,
                "cos_format_min": float(np.min(st["fmt_cos"])) if base else None,
                "cos_min": float(cos.min()), "cos_mean": float(cos.mean())})
        rows.append({"kv_keep": keep, "renorm": renorm, "layers": per_layer,
                     "embedding_cos_min": min(emb_cos[key]),
                     "embedding_cos_mean": float(np.mean(emb_cos[key]))})
    return {"config": cfg_name, "texts": len(texts), "tokens": tokens, "settings": rows}


def utilization(cfg_name: str = "default", sim: str = "verilator", seed: int = 2021,
                ns=UTIL_NS, ds=UTIL_DS, prune: bool = True) -> list[dict]:
    from ..testbenches.tb_attention import job_from_arrays, run_attention

    cfg = preset(cfg_name).attention
    rng = np.random.default_rng(seed)
    jobs, meta = [], []
    for d in ds:
        for n in ns:
            for k_v in ((None, n // 4) if prune else (None,)):
                q = rng.normal(size=(n, d)) * 1.5
                k = rng.normal(size=(n, d)) * 1.5
                v = rng.normal(size=(n, d))
                qi, qs = _q(q, cfg)
                ki, ks = _q(k, cfg)
                vi, _ = _q(v, cfg)
                params = golden.score_params(cfg, qs, ks, d)
                jobs.append(job_from_arrays(qi, ki, vi, params, k_v))
                meta.append((n, d, k_v, qi, ki, vi, params))
    t0 = time.time()
    print(f"running {len(jobs)} whole heads through the RTL ({sim}) ...", flush=True)
    results = run_attention(cfg, jobs, sim=sim)
    wall = time.time() - t0
    out = []
    mults = cfg.qk_mults + cfg.pv_mults
    for (n, d, k_v, qi, ki, vi, params), res in zip(meta, results, strict=True):
        ref = golden.attention(cfg, qi, ki, vi, params, k_v)
        got = np.array([row[:d] for row in res["out"]])
        ok = bool(np.array_equal(got, ref.out) and res["probs"] == ref.p.tolist())
        kept = n if k_v is None else k_v
        useful_qk = n * n * d
        out.append({
            "n": n, "d": d, "k_v": kept, "cycles": res["cycles"], "macs": res["macs"],
            "utilization": res["macs"] / (mults * res["cycles"]),
            "qk_utilization": useful_qk / (cfg.qk_mults * res["cycles"]),
            "cycles_per_query": res["cycles"] / n,
            "qk_bound_cycles": n * (-(-n * d // cfg.qk_mults)),
            "golden_match": ok,
        })
    print(f"  {wall:.1f} s of simulation", flush=True)
    return out


def _q(x, cfg):
    s = float(np.abs(x).max()) / cfg.data_max
    return np.clip(np.round(x / s), cfg.data_min, cfg.data_max).astype(np.int64), s


def table(result: dict) -> str:
    lines = []
    acc = result.get("accuracy")
    if acc:
        lines.append(f"Fixed-point attention vs float on MiniLM ({acc['texts']} texts, "
                     f"{min(acc['tokens'])}-{max(acc['tokens'])} tokens, all 6 layers x 12 heads)")
        lines.append(f"{'kept':>6} {'renorm':>6} | {'p err max':>10} {'p err mean':>10} | "
                     f"{'out cos min':>11} {'out cos mean':>12} | {'emb cos min':>11}")
        for s in acc["settings"]:
            keep = "all" if s["kv_keep"] is None else f"{s['kv_keep']:.0%}"
            pm = [x["perr_max"] for x in s["layers"] if x["perr_max"] is not None]
            pa = [x["perr_mean"] for x in s["layers"] if x["perr_mean"] is not None]
            cmin = min(x["cos_min"] for x in s["layers"])
            cmean = float(np.mean([x["cos_mean"] for x in s["layers"]]))
            lines.append(
                f"{keep:>6} {'yes' if s['renorm'] else 'no':>6} | "
                + (f"{max(pm):10.2e} {np.mean(pa):10.2e}" if pm else f"{'':>10} {'':>10}")
                + f" | {cmin:11.5f} {cmean:12.6f} | {s['embedding_cos_min']:11.5f}")
        base = acc["settings"][0]["layers"]
        lines.append("No pruning, per layer 0..5:")
        lines.append("  p err max, total           "
                     + " ".join(f"{x['perr_max']:.1e}" for x in base))
        lines.append("  p err max, 12-bit inputs   "
                     + " ".join(f"{x['perr_quant_max']:.1e}" for x in base)
                     + "   (float softmax of the quantized q, k vs float)")
        lines.append("  p err max, datapath        "
                     + " ".join(f"{x['perr_format_max']:.1e}" for x in base)
                     + "   (fixed point vs float softmax of the same quantized q, k)")
        lines.append("  out cos min, total         "
                     + " ".join(f"{x['cos_min']:.5f}" for x in base))
        lines.append("  out cos min, datapath      "
                     + " ".join(f"{x['cos_format_min']:.5f}" for x in base))
    util = result.get("utilization")
    if util:
        lines.append("")
        lines.append(f"Multiplier utilization, whole head (m = n queries), config "
                     f"{result['config']} (Q.K + prob x V multipliers)")
        lines.append(f"{'d':>4} {'n':>5} {'kept':>5} | {'cycles':>8} {'per query':>9} "
                     f"{'Q.K bound':>9} | {'util':>6} {'Q.K util':>8} | golden")
        for u in util:
            lines.append(f"{u['d']:4d} {u['n']:5d} {u['k_v']:5d} | {u['cycles']:8d} "
                         f"{u['cycles_per_query']:9.1f} {u['qk_bound_cycles']:9d} | "
                         f"{u['utilization']:6.1%} {u['qk_utilization']:8.1%} | "
                         f"{'MATCH' if u['golden_match'] else 'MISMATCH'}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The README's tables of this benchmark."""
    lines = []
    acc = result.get("accuracy")
    if acc:
        lines += [
            f"Fixed-point attention against float attention on all-MiniLM-L6-v2 ({acc['texts']} "
            f"texts of {min(acc['tokens'])}-{max(acc['tokens'])} tokens, every query of all 6 "
            "layers x 12 heads; q, k, v quantized to 12 bits with a per-tensor scale; golden "
            "model, bit-exact with the RTL):", "",
            "| keys kept per query | renormalised | probability error max / mean | output cosine "
            "min / mean | sentence-embedding cosine min / mean (every layer fixed point) |",
            "|---|---|---|---|---|"]
        for st in acc["settings"]:
            keep = "all" if st["kv_keep"] is None else f"{st['kv_keep']:.0%}"
            pm = [x["perr_max"] for x in st["layers"] if x["perr_max"] is not None]
            pa = [x["perr_mean"] for x in st["layers"] if x["perr_mean"] is not None]
            perr = f"{max(pm):.1e} / {np.mean(pa):.1e}" if pm else "(same as all)"
            cmin = min(x["cos_min"] for x in st["layers"])
            cmean = float(np.mean([x["cos_mean"] for x in st["layers"]]))
            lines.append(f"| {keep} | {'yes' if st['renorm'] else 'no'} | {perr} | "
                         f"{cmin:.5f} / {cmean:.6f} | {st['embedding_cos_min']:.5f} / "
                         f"{st['embedding_cos_mean']:.5f} |")
        base = acc["settings"][0]["layers"]
        lines += ["", "Where the error comes from (no pruning, per layer 0-5):", "",
                  "| | " + " | ".join(str(x["layer"]) for x in base) + " |",
                  "|---|" + "---:|" * len(base),
                  "| probability error max, total | "
                  + " | ".join(f"{x['perr_max']:.1e}" for x in base) + " |",
                  "| ... of which 12-bit inputs (float softmax of the quantized q, k) | "
                  + " | ".join(f"{x['perr_quant_max']:.1e}" for x in base) + " |",
                  "| ... datapath alone (fixed point vs float on the same quantized inputs) | "
                  + " | ".join(f"{x['perr_format_max']:.1e}" for x in base) + " |",
                  "| output cosine min, total | "
                  + " | ".join(f"{x['cos_min']:.5f}" for x in base) + " |",
                  "| output cosine min, datapath alone | "
                  + " | ".join(f"{x['cos_format_min']:.5f}" for x in base) + " |"]
    util = result.get("utilization")
    if util:
        lines += ["", f"Multiplier utilization of the query pipeline's RTL (config "
                  f"{result['config']}: 64 Q.K + 64 prob x V multipliers), a whole head "
                  "(m = n queries), from the pipeline's own counters; every output checked "
                  "against the golden model:", "",
                  "| d | n | keys kept | cycles | cycles per query | Q.K bound per query | "
                  "utilization (both arrays) | Q.K array | golden |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for u in util:
            lines.append(f"| {u['d']} | {u['n']} | {u['k_v']} | {u['cycles']} | "
                         f"{u['cycles_per_query']:.1f} | {u['qk_bound_cycles'] // u['n']} | "
                         f"{u['utilization']:.1%} | {u['qk_utilization']:.1%} | "
                         f"{'match' if u['golden_match'] else 'MISMATCH'} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    acc = result.get("accuracy")
    if acc:
        ax = axes[0]
        for renorm, style in ((False, "o-"), (True, "s--")):
            pts = [(1.0 if s["kv_keep"] is None else s["kv_keep"], s["embedding_cos_mean"])
                   for s in acc["settings"] if s["renorm"] == renorm or s["kv_keep"] is None]
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                    label="renormalised" if renorm else "plain")
        ax.set_xlabel("keys kept per query (value pruning)")
        ax.set_ylabel("sentence-embedding cosine vs float")
        ax.set_title("MiniLM, fixed-point attention in every layer")
        ax.grid(alpha=0.3)
        ax.legend()
    util = result.get("utilization")
    if util:
        ax = axes[1]
        for d in sorted({u["d"] for u in util}):
            for pruned in (False, True):
                pts = [(u["n"], u["utilization"]) for u in util
                       if u["d"] == d and (u["k_v"] < u["n"]) == pruned]
                if pts:
                    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts],
                            "o-" if not pruned else "s--",
                            label=f"d={d}" + (", k_v=n/4" if pruned else ""))
        ax.axhline(90, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (keys = queries)")
        ax.set_ylabel("multiplier utilization (%)")
        ax.set_title("query pipeline RTL, whole head")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(*, json_path=None, plot_path=None, sim="verilator", seed=2021, config="default",
         skip_rtl=False) -> int:
    t0 = time.time()
    result = {"config": config, "seed": seed}
    result["accuracy"] = accuracy(config)
    if not skip_rtl:
        result["utilization"] = utilization(config, sim=sim, seed=seed)
    result["seconds"] = time.time() - t0
    print(table(result))
    json_path = Path(json_path or "build/bench/attention.json")
    plot_path = Path(plot_path or "build/bench/attention.png")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    plot(result, plot_path)
    print(f"JSON: {json_path}   plot: {plot_path}")
    ok = all(u["golden_match"] for u in result.get("utilization", []))
    return 0 if ok else 1
