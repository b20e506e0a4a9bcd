"""Cycle model of the Q.K array (`hw/attention/qk.py`), exact when nothing stalls.

A query of n keys at head dimension d (g = M/d keys per K word, S dots per output beat) holds the
array's read stage for ceil(n / min(g, S)) cycles: one K word a cycle while g <= S, one output beat
a cycle (a word every g/S cycles) when g > S. Queries offered back to back follow each other with
no bubble. A beat leaves log2(M) + 8 cycles after the K read that completes it: a query's first
beat log2(M) + 9 cycles after its ``q`` transfer (later when g < S and n > g: the first beat then
needs several words), the last beat of a batch log2(M) + 8 cycles after its last read cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

from spatten.config import AttentionConfig

__all__ = ["qk_query_cycles", "qk_schedule", "qk_cycle_model", "qk_latency"]


def _per_query(value, queries: int, name: str) -> list[int]:
    if isinstance(value, Sequence):
        if len(value) != queries:
            raise ValueError(f"{name} has {len(value)} entries for {queries} queries")
        return [int(v) for v in value]
    return [int(value)] * queries


def qk_latency(cfg: AttentionConfig) -> int:
    """Cycles from a ``q`` transfer to the query's first ``o`` beat, nothing else in flight:
    the config's `qk_latency` (log2(M) + 9), the one number the RTL is built to."""
    return cfg.qk_latency


def qk_query_cycles(cfg: AttentionConfig, n: int, d: int) -> int:
    """Read-stage cycles of one query: ceil(n / min(M/d, S))."""
    if not (isinstance(d, int) and 8 <= d <= cfg.qk_mults and d & (d - 1) == 0):
        raise ValueError(f"head dimension d = {d} is not a power of two in [8, {cfg.qk_mults}]")
    if not 1 <= n <= cfg.capacity:
        raise ValueError(f"n = {n} is outside 1..{cfg.capacity}")
    per = min(cfg.qk_mults // d, cfg.softmax_lanes)
    return -(-n // per)


def qk_schedule(cfg: AttentionConfig, n, d, queries: int = 1) -> list[tuple[int, int]]:
    """(first, last) ``o`` transfer cycle of each query, counted from the first ``q`` transfer
    (cycle 0), for `queries` queries offered back to back with ``o`` always ready. `n` and `d`
    are one value for every query or a sequence of one per query.

    Query i reads K words from cycle start_i = 1 + sum(T_j, j < i), T_j = ceil(n_j / min(g_j, S));
    a beat leaves log2(M) + 8 cycles after the read of the word that completes it, so its first
    beat leaves at start_i + ceil(min(n_i, S) / min(g_i, S)) - 1 + log2(M) + 8 and its last at
    start_i + T_i - 1 + log2(M) + 8."""
    if queries < 1:
        raise ValueError(f"queries must be at least 1, not {queries}")
    ns = _per_query(n, queries, "n")
    ds = _per_query(d, queries, "d")
    read_latency = cfg.qk_read_latency
    S = cfg.softmax_lanes
    out, start = [], 1
    for ni, di in zip(ns, ds, strict=True):
        t = qk_query_cycles(cfg, ni, di)
        per = min(cfg.qk_mults // di, S)
        first_words = -(-min(ni, S) // per)
        out.append((start + first_words - 1 + read_latency, start + t - 1 + read_latency))
        start += t
    return out


def qk_cycle_model(cfg: AttentionConfig, n, d, queries: int = 1) -> int:
    """Cycles from the first ``q`` transfer to the last ``o`` transfer (their difference) for
    `queries` queries offered back to back with ``o`` always ready: sum(T_i) + log2(M) + 8.
    `n` and `d` as in `qk_schedule`."""
    return qk_schedule(cfg, n, d, queries)[-1][1]
