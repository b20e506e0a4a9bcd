"""Where the query pipeline's multipliers and block RAMs go on the ECP5-85F.

The LFE5U-85F has its 156 MULT18X18D sites in three rows (Y = 10, 34, 58) of 13 DSP tiles, four
multipliers a tile, across the whole width of the die. The pipeline at the default
configuration uses 139 of them, so the placer fills every row, and left to itself it scatters
each array over two rows and the whole width (a lane's neighbours in the adder tree or the fold
are often 60 columns away): routing then does not converge. Pinning the arrays gives each one
rows of its own, in the order its wiring wants:

- The Q.K array (M lanes): in lane order, whole 16-lane subtrees of its adder tree in row 10,
  the rest from the left end of row 34.
- prob x V (Mv lanes): lane e folds with lanes e + 8, e + 16, .. e + Mv/2 (`hw.attention.pv`), and
the
  renormalisation lane's first read multiplexer reads the same lanes, so the lanes are in groups
  of equal e mod 8, each group on neighbouring sites: whole groups in row 58, the rest from the
  right end of row 34, the lane's own multipliers just left of them.

The other multipliers (the softmax's) take what is left. The block RAMs go to the rows between
(`attention_pins`): the K planes between the Q.K array's rows, the V buffer between prob x V's,
each block near the lanes its bits feed (approximately: a block holds bits of about three
neighbouring lanes, which are in different fold groups), the softmax's and value pruning's
selector's below prob x V. `attention_bels` returns the BEL of each pinned multiplier by
hierarchical cell
name, `attention_pins` those and the block-RAM rules; `fpga.build.build(pins=...)` hands them to
`fpga.pins` (``spatten-nextpnr-ecp5``), which sets them as ``BEL`` attributes in the netlist
between Yosys and nextpnr (nextpnr fails if a site does not exist).
"""

from __future__ import annotations

from spatten.config import AttentionConfig

__all__ = ["ECP5_85F_DSP_ROWS", "ECP5_85F_EBR_ROWS", "ATTENTION_PATHS", "dsp_sites",
           "ebr_sites", "bel_column", "qk_lane_order", "pv_lane_order", "attention_bels",
           "attention_pins", "top_pins"]

#: where the `hw.attention.attention.Attention` sits inside the board harness, per `hw.tops` name
ATTENTION_PATHS = {"attention": "dut", "attention_fed": "dut.unit"}

#: rows of MULT18X18D sites on the LFE5U-85F
ECP5_85F_DSP_ROWS = (10, 34, 58)
#: rows of DP16KD (block RAM) sites on the LFE5U-85F
ECP5_85F_EBR_ROWS = (22, 46, 70, 82)
#: first column of each DSP tile (sites at x, x+1, x+4, x+5) and of each block-RAM tile (sites
#: at x, x+2, x+4, x+6); the clock spine sits at columns 64-68
_TILE_X = (4, 13, 22, 31, 40, 49, 58, 69, 78, 87, 96, 105, 114)
_SITE = ((0, "MULT18_0"), (1, "MULT18_1"), (4, "MULT18_4"), (5, "MULT18_5"))
SITES_PER_ROW = len(_TILE_X) * len(_SITE)


def dsp_sites(row: int) -> list[str]:
    """The 52 MULT18X18D BELs of a row of the LFE5U-85F, left to right."""
    if row not in ECP5_85F_DSP_ROWS:
        raise ValueError(f"the LFE5U-85F has multiplier rows {ECP5_85F_DSP_ROWS}, not {row!r}")
    return [f"X{x + dx}/Y{row}/{bel}" for x in _TILE_X for dx, bel in _SITE]


def ebr_sites(row: int) -> list[str]:
    """The 52 DP16KD BELs of a block-RAM row of the LFE5U-85F, left to right."""
    if row not in ECP5_85F_EBR_ROWS:
        raise ValueError(f"the LFE5U-85F has block-RAM rows {ECP5_85F_EBR_ROWS}, not {row!r}")
    return [f"X{x + 2 * k}/Y{row}/EBR{k}" for x in _TILE_X for k in range(4)]


def qk_lane_order(m: int) -> list[int]:
    """The Q.K lanes in site order: lane order (neighbours in the adder tree are neighbours)."""
    return list(range(m))


def pv_lane_order(mv: int) -> list[int]:
    """prob x V lanes in site order: groups of equal e mod 8 (lane e folds with e + 8k), each
    in ascending order."""
    group = max(1, mv // 8)
    return [g + 8 * t for g in range(min(8, mv)) for t in range(group)]


def attention_bels(cfg: AttentionConfig, prefix: str) -> dict[str, str]:
    """{hierarchical cell name: BEL} for the multipliers of the `hw.attention.attention.Attention`
    at `prefix` (``"dut"`` in the board harness, ``"dut.unit"`` inside `hw.tops.Fed`).

    Raises ValueError when the arrays do not fit the rows as described in the module's
    docstring."""
    if not isinstance(cfg, AttentionConfig):
        raise TypeError(f"cfg must be an AttentionConfig, not {cfg!r}")
    M, Mv = cfg.qk_mults, cfg.pv_mults
    n = SITES_PER_ROW
    qk_row0 = min(M, n - n % 16)                  # whole 16-lane subtrees
    pv_group = max(1, Mv // 8)
    pv_row2 = min(Mv, (n // pv_group) * pv_group)  # whole fold groups
    # hw.attention.pv: the renormalisation lane multiplies chunks of prob_bits + 1 bits of the sum
    lane_mults = -(-cfg.acc_width // (cfg.prob_bits + 1))
    mid = (M - qk_row0) + (Mv - pv_row2) + lane_mults
    if mid > n:
        raise ValueError(f"Q.K ({M}) and prob x V ({Mv}) multipliers do not fit the "
                         f"LFE5U-85F's rows: {mid} would go to row {ECP5_85F_DSP_ROWS[1]}, "
                         f"which has {n} sites")
    rows = {y: dsp_sites(y) for y in ECP5_85F_DSP_ROWS}
    low, middle, high = (rows[y] for y in ECP5_85F_DSP_ROWS)
    qk_sites = low[:qk_row0] + middle[:M - qk_row0]
    pv_rest = Mv - pv_row2
    pv_sites = high[:pv_row2] + (middle[n - pv_rest:] if pv_rest else [])
    lane_sites = middle[n - pv_rest - lane_mults:n - pv_rest]
    bels = {}
    for lane, site in zip(qk_lane_order(M), qk_sites, strict=True):
        bels[f"{prefix}.qk.mul{lane}.dsp"] = site
    for lane, site in zip(pv_lane_order(Mv), pv_sites, strict=True):
        bels[f"{prefix}.pv.mul{lane}.dsp"] = site
    for k, site in enumerate(lane_sites):
        bels[f"{prefix}.pv.lane_mul{k}.dsp"] = site
    assert len(set(bels.values())) == len(bels)
    return bels


def bel_column(bel: str) -> int:
    """The column (X) of a BEL name such as ``X13/Y46/EBR0``."""
    return int(bel.split("/")[0][1:])


def attention_pins(cfg: AttentionConfig, prefix: str) -> dict:
    """The pins of the `hw.attention.attention.Attention` at `prefix` for `fpga.pins`: the
    multipliers (`attention_bels`) and the block RAMs.

    - The V buffer in the block-RAM row between prob x V's two rows (46), each block near the
      lanes its bits feed; the K planes in the row between the Q.K array's (22), likewise.
    - The softmax's blocks in row 70 left of the middle (columns 30-60), value pruning's selector's
      and the kept-pair FIFO's along row 82 (columns 30-95): the rows below prob x V, which the
      placer otherwise leaves empty (it packs everything around the pinned multipliers), so
      that the two units take that room. This is the placement of the routed half-size builds;
      with every unit's blocks packed at columns 56-76, or the softmax's spread over 30-95,
      router2 stalled at thousands of overused wires on the same netlist.
    """
    bels = attention_bels(cfg, prefix)
    qk_x = [bel_column(bels[f"{prefix}.qk.mul{e}.dsp"]) for e in range(cfg.qk_mults)]
    pv_x = [bel_column(bels[f"{prefix}.pv.mul{e}.dsp"]) for e in range(cfg.pv_mults)]
    # the softmax's blocks together left of the middle, the selector's and the kept-pair
    # FIFO's spread along their row (the placement of the routed half-size builds)
    soft_x = [30, 40, 50, 60]
    spread = list(range(30, 100, 5))
    esc = prefix.replace(".", r"\.")
    return {
        "bels": bels,
        "rows": [
            {"regex": rf"{esc}\.buffers\.vmem\.0\.(\d+)", "row": 46, "targets": pv_x},
            {"regex": rf"{esc}\.buffers\.kmsb\.0\.(\d+)", "row": 22, "targets": qk_x},
            {"regex": rf"{esc}\.buffers\.klsb\.0\.(\d+)", "row": 22, "targets": qk_x},
            {"regex": rf"{esc}\.softmax\.(?:scores|ebanks|exp_rom)\.\d+\.(\d+)",
             "row": 70, "targets": soft_x},
            {"regex": rf"{esc}\.vsel\.mem\.0\.(\d+)", "row": 82, "targets": spread},
            {"regex": rf"{esc}\.pairs\.kept_fifo\.storage\.0\.(\d+)", "row": 82,
             "targets": spread},
        ],
    }


def top_pins(top: str, cfg: AttentionConfig, board: str) -> dict:
    """The pins `spatten synth` uses for `top` on `board`: `attention_pins` for the tops that
    hold the query pipeline on the ULX3S-85F, none otherwise."""
    if board != "ulx3s-85f" or top not in ATTENTION_PATHS:
        return {}
    return attention_pins(cfg, ATTENTION_PATHS[top])
