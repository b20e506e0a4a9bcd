"""Cycle model of the prob x V array (`hw/attention/pv.py`), exact when nothing stalls.

Work. A query's kept indices travel S to a beat (the last beat partial; an empty query is one
beat with count 0). Each beat occupies the issue stage for as many cycles as it touches V words
(word of index r: r // gv, gv = Mv/d; pairs of a beat in one word form one run), at least one.
So a dense query (every index of n kept) takes ceil(n / min(gv, S)) issue cycles: n*d/Mv when
gv <= S.

Pipeline (cycle numbers relative to an input beat transferred in cycle t):
stage A (t+1), stage B (t+2), the issue stage C (from t+3, one word a cycle); a word issued in
cycle u reaches the accumulators in u+3, and a query's last word loads the fold register F at
the end of u+3. F then folds log2(gv) cycles and, in the next cycle (the output register being
free), moves into the output register: the ``o`` beat is valid from u + log2(gv) + 5.
With renorm, the reciprocal of the probability sum is ready ``pv_recip_ready`` cycles after the
issue of the query's last word; from then on, once F has folded, the lane is idle and the output
register free, the lane starts, reads one column a cycle from the next cycle on for d cycles
and writes each to the output register ``pv_lane_depth`` cycles after its read: the beat is
valid from (lane start) + d + ``pv_lane_depth`` + 1.

Back pressure inside: a query's last word is issued only if nothing else is on its way to F
and F is sure to be free ``pv_grant_lookahead`` cycles later: F empty, or (no renorm, at most
that many fold steps left, the output register empty, the lane idle), or (renorm, the lane
reading with at most that many columns left). Stages A, B, C form an elastic pipeline (a stage
takes a beat when it is empty or hands its beat on in the same cycle), except that the issue
stage takes no beat in the cycle that issues a query's last word: it empties first (one cycle
per query).

The latencies ``pv_recip_ready``, ``pv_lane_depth`` and ``pv_grant_lookahead`` are properties of
`spatten.config.AttentionConfig`, which the RTL is built with.

`pv_schedule` runs these rules cycle by cycle (control only, no data); `pv_cycle_model` reports
one query's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from spatten.config import AttentionConfig

__all__ = ["pv_beat_ops", "pv_schedule", "pv_cycle_model"]


def _check_d(cfg: AttentionConfig, d: int) -> None:
    if not (isinstance(d, int) and 8 <= d <= cfg.pv_mults and d & (d - 1) == 0):
        raise ValueError(f"head dimension d = {d!r} is not a power of two in [8, "
                         f"{cfg.pv_mults}]")


def pv_beat_ops(cfg: AttentionConfig, kept: Sequence[int], d: int) -> list[int]:
    """Issue cycles of each input beat of a query keeping the ascending indices `kept`."""
    _check_d(cfg, d)
    kept = [int(x) for x in kept]
    if any(b <= a for a, b in zip(kept, kept[1:], strict=False)):
        raise ValueError("kept indices must be strictly ascending")
    if kept and (kept[0] < 0 or kept[-1] >= cfg.capacity):
        raise ValueError(f"kept indices must lie in 0..{cfg.capacity - 1}")
    S, gv = cfg.softmax_lanes, cfg.pv_mults // d
    if not kept:
        return [1]
    return [len({r // gv for r in kept[lo:lo + S]}) for lo in range(0, len(kept), S)]


def pv_schedule(cfg: AttentionConfig, queries: Sequence) -> list[dict]:
    """For queries ``(kept, d, renorm)`` offered back to back (every beat as soon as the unit takes
    it) with ``o`` always ready, the cycle of each query's first input beat transfer (``in``) and
    of its ``o`` transfer (``out``), counted from the first transfer (cycle 0); ``latency`` is
    out - in."""
    beats = []
    for q, (kept, d, renorm) in enumerate(queries):
        ops = pv_beat_ops(cfg, kept, d)
        L = (cfg.pv_mults // d).bit_length() - 1
        for k, n_ops in enumerate(ops):
            beats.append({"q": q, "ops": n_ops, "first": k == 0, "last": k == len(ops) - 1,
                          "rn": bool(renorm), "L": L, "d": d})
    nq = len(queries)
    res = [{"in": None, "out": None} for _ in range(nq)]
    la = cfg.pv_grant_lookahead
    a = b = c = None
    c_cnt = 0
    r1 = r2 = r3 = None
    F = None
    ap_v, ap_rem, ap_q = False, 0, None
    lane_busy = False
    lane = [None] * cfg.pv_lane_depth
    o_v, o_q = False, None
    bi, done, t = 0, 0, 0
    limit = 100 + sum(b["ops"] + 8 for b in beats) + sum(64 + q[1] for q in queries) * 2
    while done < nq:
        if t > limit:
            raise RuntimeError("pv_schedule did not finish (model error)")
        # ---- decisions from the state at the start of cycle t
        reserved = any(x is not None and x["last"] for x in (r1, r2, r3))
        grant = not reserved and (
            F is None
            or (not F["rn"] and F["rem"] <= la and not o_v and not lane_busy)
            or (F["rn"] and ap_v and ap_rem <= la))
        issue = c_done = False
        last_op = False
        if c is not None:
            seg_end = c_cnt == c["ops"] - 1
            last_op = c["last"] and seg_end
            issue = not last_op or grant
            c_done = issue and seg_end
        c_take = b is not None and (c is None or (c_done and not c["last"]))
        b_take = a is not None and (b is None or c_take)
        i_take = (a is None or b_take) and bi < len(beats)
        if o_v:                                   # o is always ready
            res[o_q]["out"] = t
            done += 1
        f_load = r3 is not None and r3["last"]
        o_ld = F is not None and not F["rn"] and F["rem"] == 0 and not lane_busy
        ap_start = (F is not None and F["rn"] and F["rem"] == 0 and not lane_busy
                    and t >= F["t_issue"] + cfg.pv_recip_ready)
        # ---- state at the start of cycle t + 1
        if o_ld:
            o_v, o_q = True, F["q"]
        elif ap_start:
            o_v = False
        elif lane[-1] is not None:
            if lane[-1]["last"]:
                o_v, o_q = True, lane[-1]["q"]
        else:
            o_v = False
        if lane[-1] is not None and lane[-1]["last"]:
            lane_busy = False
        lane = [{"q": ap_q, "last": ap_rem == 0} if ap_v else None] + lane[:-1]
        release = ap_v and ap_rem == 0
        if ap_start:
            lane_busy, ap_v, ap_rem, ap_q = True, True, F["d"] - 1, F["q"]
        elif ap_v:
            if ap_rem == 0:
                ap_v = False
            else:
                ap_rem -= 1
        release = release or o_ld
        if f_load:
            F = {"q": r3["q"], "rn": r3["rn"], "rem": r3["L"], "d": r3["d"],
                 "t_issue": r3["t_issue"]}
        elif F is not None:
            if F["rem"] > 0:
                F["rem"] -= 1
            if release:
                F = None
        r3, r2 = r2, r1
        r1 = {"q": c["q"], "last": last_op, "rn": c["rn"], "L": c["L"], "d": c["d"],
              "t_issue": t} if issue else None
        if c_take:
            c, c_cnt = b, 0
        elif c_done:
            c = None
        elif issue:
            c_cnt += 1
        if b_take:
            b = a
        elif c_take:
            b = None
        if i_take:
            a = beats[bi]
            if a["first"]:
                res[a["q"]]["in"] = t
            bi += 1
        elif b_take:
            a = None
        t += 1
    for r in res:
        r["latency"] = r["out"] - r["in"]
    return res


def pv_cycle_model(cfg: AttentionConfig, kept: Sequence[int], d: int,
                   renorm: bool = False) -> dict:
    """One query keeping the ascending indices `kept` at head dimension `d`:

    beats    input beats
    ops      issue cycles (V words read, one per run; at least one a beat)
    latency  cycles from its first beat's transfer to its ``o`` transfer, the unit idle before
    period   cycles between consecutive ``o`` beats when the same query is offered back to back
             forever (a Fraction when the steady state alternates)
    """
    ops = pv_beat_ops(cfg, kept, d)
    one = pv_schedule(cfg, [(kept, d, renorm)])[0]
    reps = 10
    many = pv_schedule(cfg, [(kept, d, renorm)] * reps)
    period = Fraction(many[-1]["out"] - many[reps // 2 - 1]["out"], reps - reps // 2)
    if period.denominator == 1:
        period = int(period)
    return {"beats": len(ops), "ops": sum(ops), "latency": one["latency"], "period": period}
