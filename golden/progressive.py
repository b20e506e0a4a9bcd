"""Progressive quantization and the memory side of one head group, bit for bit and byte for byte.

A *head group* is one K/V head of one layer: its surviving keys (the token indices left by
cascade pruning, ascending) and the queries of the query heads that share it (grouped-query
attention: every query of the group is served from the same K and V buffers). This module
predicts what the accelerator does for one head group: every output row, which rows are
recomputed at full precision, and every DRAM request per tensor.

The schedule (the fetch unit and the query issuer follow it)
------------------------------------------------------------
Positions: survivor i (token ``survivors[i]``) sits in row i of the K and V buffers; the top-k
engine's kept indices are such positions.

1. **K MSB**: the MSB-plane rows of all survivors, coalesced into runs of consecutive token
   indices, each run cut into bursts (`golden.dram_image.requests_for`). Without progressive
   quantization (``tau=None``) the LSB-plane rows follow at once and every pass is at full
   precision.
2. **Q**: each query's row, in query order, one run each.
3. **Passes** (``tau`` given). Query j first runs an MSB pass M(j): K is
   `msb_estimate(msb, lsb_bits, fill)` ("mid": the middle of the dropped range, "zero": the
   dropped bits as zeros). Its row maximum probability p_max (U0.16) triggers a refetch when
   ``p_max < tau`` (tau in U1.16: 0 never refetches, 65536 = 1.0 always does). A refetched
   query runs again at full precision, F(j); the probabilities of M(j) are then dropped. The
   issuer runs one query ahead of the decisions: it issues M(0), M(1), then, as the decision of
   query j arrives, F(j) (if refetched) followed by M(j + 2):
   ``M0 M1 [F0] M2 [F1] M3 ... M(m-1) [F(m-2)] [F(m-1)]``. The *final pass* of query j is F(j)
   if refetched, else M(j); final passes reach value pruning and prob x V in issue order, so
   outputs leave in that order (`GroupResult.order`), each tagged with its query number.
4. **K LSB**: before the group's first F pass, the LSB-plane rows of all survivors (once per
   group; every later F pass reuses them).
5. **V**: for each final pass, in final order, the kept positions whose V rows are not yet in
   the V buffer, as token indices, coalesced and cut into bursts; they stay for the group.

Every tensor's requests are predicted in order; how the fetch unit interleaves the tensors'
requests on the one DRAM port is not (it depends on timing), but the bytes per tensor are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spatten.config import DEFAULT, AttentionConfig, Config, MemoryConfig

from .attention import AttentionError, ScoreParams, attention_query, check_params
from .dram_image import ImageLayout, PlaneLayout, merge_k, msb_estimate, requests_for, split_k

__all__ = ["TENSORS", "FILLS", "tau_fixed", "GroupPlanes", "group_planes", "GroupResult",
           "run_group", "issue_order"]

#: The tensors whose DRAM traffic is counted, in report order.
TENSORS = ("k_msb", "k_lsb", "q", "v")
FILLS = ("mid", "zero")


def tau_fixed(tau: float, prob_bits: int = DEFAULT.attention.prob_bits) -> int:
    """The trigger threshold as the U1.(prob_bits) register value: round(tau * 2**prob_bits),
    tau in [0, 1]."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) or \
            not 0.0 <= float(tau) <= 1.0:
        raise AttentionError(f"tau must be a number from 0 to 1, not {tau!r}")
    return int(round(float(tau) * (1 << prob_bits)))


@dataclass(frozen=True)
class GroupPlanes:
    """The DRAM planes one head group reads: K MSB, K LSB, V (rows = token indices) and the Q
    plane of each of its query heads (rows = query token indices)."""

    k_msb: PlaneLayout
    k_lsb: PlaneLayout
    v: PlaneLayout
    q: tuple


def group_planes(layout: ImageLayout, layer: int, group: int) -> GroupPlanes:
    """The planes of head group ``group`` of ``layer`` in ``layout``."""
    hg = layout.head_group(layer, group)
    g = layout.group_size
    return GroupPlanes(hg.k_msb, hg.k_lsb, hg.v,
                       tuple(layout.q_plane(layer, group * g + h) for h in range(g)))


@dataclass
class GroupResult:
    """What the accelerator does for one head group (see the module docstring).

    out        (m, d) output rows in query order (S(out_width))
    order      query numbers in the order their final passes (and outputs) leave
    refetched  (m,) bool: the query ran again at full precision
    p_max_msb  (m,) p_max of each query's first pass (its MSB pass, or its only pass)
    p          (m, n) final probabilities
    kept       per query, the kept positions (ascending)
    passes     the issue order of passes: ("M" or "F", query)
    requests   {tensor: [Request, ...]} in each tensor's own order
    """

    out: np.ndarray
    order: list
    refetched: np.ndarray
    p_max_msb: np.ndarray
    p: np.ndarray
    kept: list
    passes: list
    requests: dict = field(default_factory=dict)

    def row_beats(self) -> list:
        """The pipeline's ``row`` beats, one per pass in issue order: (query, full precision,
        dropped for a full-precision pass)."""
        return [(j, int(kind == "F"), int(kind == "M" and bool(self.refetched[j])))
                for kind, j in self.passes]

    def final_probs(self) -> list:
        """The probability rows of the final passes, in output order (lists of ints)."""
        return [self.p[j].tolist() for j in self.order]

    def dram_bytes(self, beat_bytes: int) -> dict:
        """{tensor: bytes read} for every tensor of `TENSORS`, plus "total"."""
        out = {t: sum(r.beats for r in self.requests.get(t, [])) * beat_bytes for t in TENSORS}
        out["total"] = sum(out.values())
        return out


def issue_order(refetch: list, ahead: int = DEFAULT.attention.issue_ahead) -> list:
    """The issue order of passes for queries with the given refetch decisions: `ahead` MSB
    passes (`AttentionConfig.issue_ahead`), then after each decision its F pass (if refetched)
    and the next M pass."""
    m = len(refetch)
    order = [("M", j) for j in range(min(m, ahead))]
    for j in range(m):
        if refetch[j]:
            order.append(("F", j))
        if j + ahead < m:
            order.append(("M", j + ahead))
    return order


def _check_indices(name: str, idx, limit: int) -> np.ndarray:
    a = np.asarray(idx, dtype=np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= limit):
        raise AttentionError(f"{name}: index {int(a.max() if a.max() >= limit else a.min())} "
                             f"outside 0..{limit - 1}")
    if a.size > 1 and np.any(np.diff(a) <= 0):
        raise AttentionError(f"{name} must be strictly ascending")
    return a


def run_group(cfg: AttentionConfig | Config, planes: GroupPlanes, k, v, q, survivors,
              queries, params: ScoreParams, *, tau: float | None = None, fill: str = "mid",
              msb_bits: int | None = None, memory: MemoryConfig | None = None,
              k_v: int | None = None, renorm: bool = False) -> GroupResult:
    """One head group through the accelerator.

    k, v       (N, d) integer K and V of every stored token of the group (the planes' rows)
    q          sequence of (Nq_h, d) integer Q arrays, one per query head of the group
    survivors  ascending token indices (rows of k, v) that take part; n = len(survivors)
    queries    list of (query head h, row of q[h]) in query order
    params     the score scaling (`golden.attention.score_params`)
    tau        progressive-quantization trigger in [0, 1], None: full precision only
    fill       the MSB-only estimate of the dropped bits: "mid" or "zero"
    msb_bits   MSB plane width (default: memory.msb_bits)
    memory     beats and bursts (default `MemoryConfig()`)
    k_v        keys kept per query by value pruning (None or >= n: no pruning)
    """
    if isinstance(cfg, Config):
        memory = cfg.memory if memory is None else memory
        cfg = cfg.attention
    memory = MemoryConfig() if memory is None else memory
    msb_bits = memory.msb_bits if msb_bits is None else msb_bits
    W = cfg.data_width
    lsb_bits = W - msb_bits
    if fill not in FILLS:
        raise AttentionError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}")
    check_params(cfg, params)
    k = np.asarray(k, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    if k.ndim != 2 or k.shape != v.shape:
        raise AttentionError(f"k and v must be (N, d) arrays of one shape, not {k.shape} and "
                             f"{v.shape}")
    N, d = k.shape
    surv = _check_indices("survivors", survivors, N)
    n = len(surv)
    if n == 0:
        raise AttentionError("no surviving keys (n = 0)")
    if n > cfg.capacity:
        raise AttentionError(f"{n} survivors exceed the buffer capacity {cfg.capacity}")
    qs = [np.asarray(a, dtype=np.int64) for a in q]
    if len(qs) != len(planes.q):
        raise AttentionError(f"{len(qs)} Q arrays for {len(planes.q)} query heads")
    for h, j in queries:
        if not (0 <= h < len(qs) and 0 <= j < qs[h].shape[0]):
            raise AttentionError(f"query (head {h}, row {j}) does not exist")
    B, burst = memory.beat_bytes, memory.max_burst
    tau_q = None if tau is None else tau_fixed(tau, cfg.prob_bits)

    msb, lsb = split_k(k[surv], W, msb_bits)
    k_full = merge_k(msb, lsb, lsb_bits)
    k_est = msb_estimate(msb, lsb_bits, fill, width=W)
    v_s = v[surv]

    reqs = {t: [] for t in TENSORS}
    reqs["k_msb"] = requests_for(planes.k_msb, surv, B, burst)
    if tau_q is None:
        reqs["k_lsb"] = requests_for(planes.k_lsb, surv, B, burst)
    for h, j in queries:
        reqs["q"] += requests_for(planes.q[h], [j], B, burst)

    m = len(queries)
    first = []
    for h, j in queries:
        first.append(attention_query(cfg, qs[h][j], k_full if tau_q is None else k_est, v_s,
                                     params, k_v, renorm))
    p_max_msb = np.array([int(r.softmax.p_max) for r in first], dtype=np.int64)
    if tau_q is None:
        refetch = [False] * m
        passes = [("F", j) for j in range(m)]
    else:
        refetch = [bool(pm < tau_q) for pm in p_max_msb]
        passes = issue_order(refetch, cfg.issue_ahead)
        if any(refetch):
            reqs["k_lsb"] = requests_for(planes.k_lsb, surv, B, burst)

    final = list(first)
    for j, (h, row) in enumerate(queries):
        if refetch[j]:
            final[j] = attention_query(cfg, qs[h][row], k_full, v_s, params, k_v, renorm)
    order = [j for kind, j in passes if kind == "F" or not refetch[j]]

    resident = np.zeros(n, dtype=bool)
    for j in order:
        kept = np.asarray(final[j].kept, dtype=np.int64)
        missing = kept[~resident[kept]]
        resident[missing] = True
        reqs["v"] += requests_for(planes.v, surv[missing], B, burst)

    return GroupResult(
        out=np.array([r.pv.out for r in final], dtype=np.int64).reshape(m, d),
        order=order,
        refetched=np.array(refetch, dtype=bool),
        p_max_msb=p_max_msb,
        p=np.array([r.softmax.p for r in final], dtype=np.int64).reshape(m, n),
        kept=[np.asarray(r.kept, dtype=np.int64) for r in final],
        passes=passes,
        requests=reqs,
    )
