"""The `spatten` command: emit Verilog, run units in simulation against the golden models,
benchmark them, build bitstreams, and run the demo. `spatten COMMAND --help` for each."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from spatten.config import preset, preset_names


class UserError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


def _config(args):
    try:
        cfg = preset(args.config)
    except ValueError as e:
        raise UserError(str(e)) from None
    lanes = getattr(args, "lanes", None)
    if lanes is not None:
        cfg = cfg.replace(topk_lanes=lanes, topk_capacity=max(cfg.topk.capacity, lanes))
    return cfg


def _add_config(p):
    p.add_argument("--config", default="default", metavar="NAME",
                   help=f"configuration preset: {', '.join(preset_names())} (default: default)")


# ------------------------------------------------------------------------------------- verilog
def cmd_verilog(args):
    from spatten.hw.tops import TOPS, make_top
    from spatten.sim.infra.runner import emit_verilog

    cfg = _config(args)
    if args.top not in TOPS:
        raise UserError(f"unknown top {args.top!r}; choose one of: {', '.join(TOPS)}")
    out = emit_verilog(make_top(args.top, cfg), args.top, Path(args.output))
    print(f"{out} ({out.stat().st_size / 1024:.0f} KiB, config {cfg.name})")


# ---------------------------------------------------------------------------------------- topk
def _load_values(path: str):
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input error
        raise UserError(f"cannot read {path} as a .npy array: {e}") from None
    if arr.ndim != 1:
        raise UserError(f"{path}: expected a 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"{path}: expected an integer array, got dtype {arr.dtype}")
    return arr


def cmd_topk(args):
    from spatten.golden import topk as golden
    from spatten.sim.testbenches.tb_topk import run_topk

    cfg = _config(args)
    values = _load_values(args.input)
    try:
        golden.check_input(cfg.topk, values, args.k)
    except golden.TopKError as e:
        raise UserError(str(e)) from None
    (res,) = run_topk(cfg.topk, [{"values": values.tolist(), "k": args.k, "mode": args.mode}],
                      sim=args.sim)
    ref = (golden.select if args.mode == "exact" else golden.select_statistical)(
        cfg.topk, values, args.k)
    model = golden.cycle_model(cfg.topk, values, args.k, args.mode)
    match = (res["indices"] == ref.indices.tolist() and res["threshold"] == ref.threshold
             and res["values"] == values[ref.indices].tolist() and res["error"] == "NONE")
    n, P = values.size, cfg.topk.lanes
    out = {
        "n": int(n), "k": args.k, "lanes": P, "mode": args.mode, "config": cfg.name,
        "sim": args.sim, "indices": res["indices"], "values": res["values"],
        "threshold": res["threshold"], "selected": len(res["indices"]),
        "cycles": {"select": res["select_cycles"], "total": res["total_cycles"]},
        "model_cycles": {"select": model["select"], "total": model["total"]},
        "golden_match": bool(match),
    }
    print(f"top-k   n={n} k={args.k} lanes={P} mode={args.mode} sim={args.sim} config={cfg.name}")
    shown = ", ".join(map(str, res["indices"][:16])) + (" ..." if len(res["indices"]) > 16 else "")
    print(f"selected {len(res['indices'])} indices: {shown}")
    print(f"threshold {res['threshold']}")
    print(f"cycles  select {res['select_cycles']} ({res['select_cycles'] / (n / P):.2f} n/P), "
          f"total {res['total_cycles']} ({res['total_cycles'] / (n / P):.2f} n/P); "
          f"model {model['select']} / {model['total']}")
    print(f"golden  {'MATCH' if match else 'MISMATCH'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0 if match else 1


# ----------------------------------------------------------------------------------- attention
def _load_qkv(path: str):
    """q, k, v (integer arrays) and q_scale, k_scale, v_scale (floats) from an .npz file."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input error
        raise UserError(f"cannot read {path} as an .npz archive: {e}") from None
    missing = [x for x in ("q", "k", "v", "q_scale", "k_scale", "v_scale") if x not in arrays]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)} (it needs integer arrays q, k, v "
                        "and float scalars q_scale, k_scale, v_scale)")
    for name in ("q", "k", "v"):
        a = arrays[name]
        if not np.issubdtype(a.dtype, np.integer):
            raise UserError(f"{path}: {name} must be an integer array, got dtype {a.dtype}")
        if a.ndim != 2:
            raise UserError(f"{path}: {name} must be 2-D, got shape {a.shape}")
    scales = []
    for name in ("q_scale", "k_scale", "v_scale"):
        a = arrays[name]
        if a.size != 1 or not np.issubdtype(a.dtype, np.number):
            raise UserError(f"{path}: {name} must be one number, got {a!r}")
        scales.append(float(a.reshape(-1)[0]))
    return arrays["q"], arrays["k"], arrays["v"], scales


def cmd_attention(args):
    import numpy as np

    from spatten.golden import attention as golden
    from spatten.golden.dram_image import ImageLayout, build_image
    from spatten.golden.progressive import group_planes, run_group
    from spatten.sim.testbenches.core_run import job_for_group, run_core

    full = _config(args)
    if args.msb_bits is not None:
        try:
            full = full.replace(mem_msb_bits=args.msb_bits)
            full.memory.lsb_bits(full.attention.data_width)
        except ValueError as e:
            raise UserError(f"--msb-bits: {e}") from None
    cfg, mem = full.attention, full.memory
    q, k, v, (qs, ks, vs) = _load_qkv(args.input)
    try:
        q, k, v = golden.check_qkv(cfg, q, k, v)
        params = golden.score_params(cfg, qs, ks, q.shape[1])
    except golden.AttentionError as e:
        raise UserError(f"{args.input}: {e} (config {args.config})") from None
    m, d = q.shape
    n = k.shape[0]
    if args.kv_keep is not None and not 1 <= args.kv_keep:
        raise UserError(f"--kv-keep must be at least 1, not {args.kv_keep}")
    if args.tau is not None and not 0.0 <= args.tau <= 1.0:
        raise UserError(f"--tau must be from 0 to 1, not {args.tau}")
    bpc = mem.beat_bytes if args.dram_bytes_per_cycle is None else args.dram_bytes_per_cycle
    if not 1 <= bpc <= mem.beat_bytes:
        raise UserError(f"--dram-bytes-per-cycle must be from 1 to the beat size "
                        f"{mem.beat_bytes}, not {bpc}")
    k_v = None if args.kv_keep is None or args.kv_keep >= n else args.kv_keep

    # one head group: every key survives, every row of q is a query; K as MSB + LSB planes
    layout = ImageLayout.from_config(cfg, layers=1, kv_heads=1, q_heads=1, d=d, n_max=n,
                                     m_max=m, msb_bits=mem.msb_bits, beat_bytes=mem.beat_bytes,
                                     align=mem.align)
    image = build_image(layout, k[None, None], v[None, None], q[None, None])
    planes = group_planes(layout, 0, 0)
    surv, queries = list(range(n)), [(0, j) for j in range(m)]
    ref = run_group(full, planes, k, v, [q], surv, queries, params, tau=args.tau, k_v=k_v,
                    renorm=args.renorm)
    img_dir = Path("build/cli")
    img_dir.mkdir(parents=True, exist_ok=True)
    img = (img_dir / f"attention-image-{os.getpid()}.bin").resolve()
    img.write_bytes(image)
    depth = 4096
    while depth * mem.beat_bytes < len(image):
        depth *= 2
    job = job_for_group(full, layout, img, planes, surv, queries, params, k_v=k_v,
                        renorm=args.renorm, tau=args.tau, bytes_per_cycle=bpc)
    print(f"simulating {m} queries on {args.sim} behind the DRAM model (the first run of a "
          f"configuration builds the simulator: a minute or more)...", file=sys.stderr,
          flush=True)
    try:
        (res,) = run_core(full.replace(mem_group_size=1), [job], depth_beats=depth,
                          sim=args.sim)
    finally:
        img.unlink(missing_ok=True)
    by_tag = {t: row[:d] for t, row in zip(res["tags"], res["out"], strict=True)}
    out = np.array([by_tag.get(j, [0] * d) for j in range(m)], dtype=np.int64)
    dram = {t: res["beats"][t] * mem.beat_bytes for t in ("k_msb", "k_lsb", "q", "v")}
    dram["total"] = sum(dram.values())
    want = ref.dram_bytes(mem.beat_bytes)
    rows = [(r["tag"], r["full"], r["refetch"]) for r in res["rows"]]
    want_rows = ref.row_beats()
    match = (res["error"] == "NONE" and np.array_equal(out, ref.out)
             and res["tags"] == ref.order and rows == want_rows
             and res["probs"] == ref.final_probs() and dram == want)
    mults = cfg.qk_mults + cfg.pv_mults
    macs = len(ref.passes) * n * d + sum(len(x) for x in ref.kept) * d
    util = macs / (mults * res["cycles"]) if res["cycles"] else 0.0
    kept = n if k_v is None else k_v
    refetched = [int(j) for j in np.flatnonzero(ref.refetched)]
    print(f"attention  m={m} queries, n={n} keys, d={d}, kept {kept} per query"
          f"{' (renormalised)' if args.renorm else ''}; config {args.config}, sim {args.sim}")
    print(f"score registers  shift={params.shift} scale={params.scale} "
          f"post_shift={params.post_shift}")
    pq = "full precision" if args.tau is None else \
        f"progressive: tau {args.tau}, K {mem.msb_bits} + {cfg.data_width - mem.msb_bits} bits"
    print(f"precision  {pq}; refetched rows {len(refetched)} of {m}")
    print("DRAM bytes  " + ", ".join(f"{t} {b}" for t, b in dram.items())
          + f"  at {bpc} bytes/cycle")
    print(f"cycles  {res['cycles']}  ({res['cycles'] / m:.1f} per query, fetches included); "
          f"multiply-accumulates {macs}; utilization {util:.1%} of {mults} multipliers")
    mw = res["memory_wait"]
    print("waiting for memory  " + ", ".join(f"{w} {c}" for w, c in mw.items())
          + " cycles" + ("  (the memory does not keep up)" if any(mw.values()) else ""))
    print(f"golden  {'MATCH' if match else 'MISMATCH'}")
    if args.json:
        doc = {
            "m": m, "n": n, "d": d, "k_v": kept, "renorm": bool(args.renorm),
            "config": args.config, "sim": args.sim, "tau": args.tau,
            "msb_bits": mem.msb_bits, "dram_bytes_per_cycle": bpc,
            "score_params": {"shift": params.shift, "scale": params.scale,
                             "post_shift": params.post_shift},
            "output": out.tolist(), "output_scale": vs / (1 << cfg.out_frac_bits),
            "output_order": res["tags"], "p_max_first_pass": ref.p_max_msb.tolist(),
            "golden_match": bool(match), "cycles": res["cycles"], "macs": macs,
            "multiplier_utilization": util, "dram_bytes": dram,
            "memory_wait_cycles": res["memory_wait"],
            "refetched_rows": refetched,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc))
    return 0 if match else 1


# --------------------------------------------------------------------------------------- bench
def cmd_bench(args):
    if args.what == "topk":
        from spatten.sim.benchmarks.bench_topk import main as bench_main

        return bench_main(trials=args.trials, json_path=args.json, plot_path=args.plot,
                          sim=args.sim, seed=args.seed)
    if args.what == "attention":
        from spatten.sim.benchmarks.bench_attention import main as bench_main

        return bench_main(json_path=args.json, plot_path=args.plot, sim=args.sim,
                          seed=args.seed, config=args.config, skip_rtl=args.no_rtl)
    if args.what == "dram":
        from spatten.sim.benchmarks.bench_dram import run as bench_main

        return bench_main(json_path=args.json, plot_path=args.plot, config=args.config,
                          quick=args.quick, all_texts=args.all_texts,
                          error_trigger=args.error_trigger)
    raise UserError(f"unknown benchmark {args.what!r}")


# --------------------------------------------------------------------------------------- synth
def cmd_synth(args):
    from spatten.fpga.build import build
    from spatten.hw.tops import TOPS, make_top

    cfg = _config(args)
    if args.top not in TOPS:
        raise UserError(f"unknown top {args.top!r}; choose one of: {', '.join(TOPS)}")
    out_dir = Path(args.output or f"build/synth/{args.board}-{args.top}-{cfg.name}")
    if args.mhz is not None:
        from spatten.fpga.boards import board as get_board

        try:
            get_board(args.board).pll(args.mhz)
        except ValueError as exc:
            raise UserError(f"--mhz {args.mhz:g}: {exc}") from None
    pins = {}
    if not args.no_floorplan:
        from spatten.fpga.floorplan import top_pins

        try:
            pins = top_pins(args.top, cfg.attention, args.board)
        except ValueError as exc:
            raise UserError(f"{exc} (build with --no-floorplan to let the placer choose)") from None
    report = build(args.board, lambda: make_top(args.top, cfg), name=args.top, out_dir=out_dir,
                   seed=args.seed, config=cfg, router=args.router, pins=pins,
                   density=args.density, heatmaps=args.heatmaps,
                   nextpnr_opts=args.nextpnr_opts, placer=args.placer,
                   patience=args.patience, mhz=args.mhz)
    # (the table of Fmax and utilization is already on stderr: `build` prints it)
    print(f"report: {out_dir / 'report.json'}")
    if not report.get("routed", True):
        print("the design did not route: router2 stopped converging (spatten synth --patience "
              "0 lets it run on)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------- demo
def cmd_demo(args):
    from spatten.demo import main as demo_main

    return demo_main(skip_synth=args.no_synth)


# ------------------------------------------------------------------------------------- results
def cmd_results(args):
    from spatten.results import RESULTS_DOC, render, update

    if args.update:
        update()
        print(f"{RESULTS_DOC} and the README's summary rewritten from build/bench and "
              "build/synth")
    else:
        print(render())
    return 0


# ---------------------------------------------------------------------------------------- main
def build_parser():
    ap = argparse.ArgumentParser(
        prog="spatten",
        description="SpAtten sparse-attention accelerator: bit-exact Amaranth RTL, numpy golden "
                    "models, cocotb/Verilator simulation and open FPGA builds.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("verilog", help="emit a unit's Verilog",
                       description="Emit the Verilog of one unit (DIR/TOP.v).")
    p.add_argument("--top", required=True,
                   help="unit to emit: topk, attention, attention_fed, core")
    _add_config(p)
    p.add_argument("-o", "--output", default="build/verilog", metavar="DIR",
                   help="output folder (default: build/verilog)")
    p.set_defaults(func=cmd_verilog)

    p = sub.add_parser("topk", help="run the top-k engine's RTL on an array and check it",
                       description="Run the top-k engine in RTL simulation on a 1-D integer "
                                   "array, compare with the golden model, print the result.")
    p.add_argument("--input", required=True, metavar="VALUES.npy", help="1-D integer array")
    p.add_argument("--k", required=True, type=int, help="how many values to select")
    _add_config(p)
    p.add_argument("--lanes", type=int, choices=[1, 2, 4, 8, 16, 32],
                   help="override the configuration's lane count P")
    p.add_argument("--mode", choices=["exact", "statistical"], default="exact",
                   help="exact top-k, or the one-pass statistical approximation")
    p.add_argument("--sim", choices=["verilator", "icarus"], default="verilator",
                   help="simulator (default: verilator)")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.set_defaults(func=cmd_topk)

    p = sub.add_parser("attention",
                       help="run the query pipeline's RTL on Q, K, V and check it",
                       description="Run integer Q, K, V (an .npz with arrays q (m x d), k and v "
                       "(n x d), and scalars q_scale, k_scale, v_scale: real = integer x scale) "
                       "through the RTL of the memory side and the query pipeline (the tensors "
                       "in a DRAM image behind the DRAM model), compare every output and DRAM "
                       "byte count with the golden model and print a summary.")
    p.add_argument("--input", required=True, metavar="QKV.npz")
    p.add_argument("--kv-keep", type=int, default=None, metavar="K",
                   help="local value pruning: keys kept per query (default: all, no pruning)")
    p.add_argument("--renorm", action="store_true",
                   help="renormalise the kept probabilities to sum to one")
    p.add_argument("--tau", type=float, default=None, metavar="T",
                   help="progressive quantization: an MSB pass first, rows whose largest "
                   "probability is below T (0..1) again at full precision (default: full "
                   "precision only)")
    p.add_argument("--msb-bits", type=int, default=None, metavar="B",
                   help="bits of K in the MSB plane (default 8: 8 + 4)")
    p.add_argument("--dram-bytes-per-cycle", type=int, default=None, metavar="N",
                   help="DRAM bandwidth of the simulated memory (default: one 16-byte beat a "
                   "cycle)")
    _add_config(p)
    p.add_argument("--sim", choices=["verilator", "icarus"], default="verilator")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("bench", help="benchmarks (tables, JSON, plots)",
                       description="Run a benchmark: a table on the terminal, JSON and a plot.")
    p.add_argument("what", choices=["topk", "attention", "dram"],
                   help="what to measure: topk (selection cycles), attention (MiniLM accuracy of "
                   "the fixed-point path, multiplier utilization of the query pipeline), dram "
                   "(DRAM bytes and quality of progressive quantization on MiniLM and SmolLM2)")
    p.add_argument("--json", metavar="OUT", help="JSON output (default: build/bench/WHAT.json)")
    p.add_argument("--plot", metavar="OUT.png", help="plot (default: build/bench/WHAT.png)")
    p.add_argument("--trials", type=int, default=50, help="random inputs per point (default 50)")
    p.add_argument("--seed", type=int, default=2021, help="random seed (default 2021)")
    p.add_argument("--sim", choices=["verilator", "icarus"], default="verilator")
    p.add_argument("--no-rtl", action="store_true",
                   help="attention: only the golden-model accuracy, no RTL simulation")
    p.add_argument("--quick", action="store_true",
                   help="dram: one short text per model, two taus (seconds)")
    p.add_argument("--all-texts", action="store_true",
                   help="dram: every SmolLM2 sample text, whole (about 1.7x the time)")
    p.add_argument("--error-trigger", action="store_true",
                   help="dram: also the trigger that estimates each row's error (about 1.5x)")
    _add_config(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("synth", help="build a bitstream and report Fmax and utilization",
                       description="Build a unit behind a small board top with the "
                                   "amaranth-boards platform and the YoWASP tools; write "
                                   "report.json beside the bitstream.")
    p.add_argument("--board", required=True, choices=["ulx3s-85f", "icebreaker"])
    p.add_argument("--top", required=True,
                   help="unit to build: topk, attention, attention_fed, core")
    _add_config(p)
    p.add_argument("--seed", type=int, default=None,
                   help="nextpnr placer seed (default: the board's, 3 for ulx3s-85f, 2 for "
                        "icebreaker)")
    p.add_argument("--router", choices=["router1", "router2"], default="router1",
                   help="nextpnr router (default router1; router2 copes better with congestion)")
    p.add_argument("--placer", choices=["heap", "static"], default="heap",
                   help="nextpnr placer (default heap; static spreads the cells more evenly, "
                        "which left router2 less congestion on the full pipeline)")
    p.add_argument("--mhz", type=float, default=None,
                   help="clock to build for (the PLL's output and nextpnr's constraint; "
                        "default: the board's target for the configuration, 100 MHz on the "
                        "ULX3S-85F); a design far from the target may route better with a "
                        "constraint near what it can reach: its report gives the Fmax achieved "
                        "either way")
    p.add_argument("--density", type=float, default=None,
                   help="the heap placer's maximum local density, 0.3 to 1 (nextpnr's "
                        "--placer-heap-beta, default 0.9): lower spreads the design over more "
                        "of the device, with more routing for each cell")
    p.add_argument("--nextpnr-opts", default="", metavar="OPTS",
                   help="more nextpnr options, appended as they are (for experiments; "
                        "give them with '=': --nextpnr-opts=--no-tmdriv)")
    p.add_argument("--patience", type=int, default=12, metavar="N",
                   help="with --router router2 on the ECP5: stop nextpnr when its fewest "
                        "overused wires (200 or more) have not fallen 10%% in N iterations, "
                        "and report the placed design as not routed (default 12; 0: never "
                        "stop)")
    p.add_argument("--heatmaps", action="store_true",
                   help="with --router router2: write its congestion heatmaps of every "
                        "iteration under DIR/heatmap/ (summed per unit by "
                        "spatten.fpga.report.congestion_by_unit)")
    p.add_argument("--no-floorplan", action="store_true",
                   help="let the placer choose every site (by default the query pipeline's "
                        "multipliers and block RAMs are pinned on the ULX3S-85F, each array "
                        "in rows of its own: fpga/floorplan.py)")
    p.add_argument("-o", "--output", metavar="DIR", help="build folder "
                   "(default: build/synth/BOARD-TOP-CONFIG)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="the main job: Verilog, RTL vs golden, bitstream, summary",
                       description="Emit the Verilog, run the top-k engine in Verilator on a "
                                   "sample and check it against the golden model, build the "
                                   "ULX3S-85F bitstream and print every check (passed, FAILED "
                                   "or MISSED) and a summary (build/demo/summary.json). Exit "
                                   "status 1 when the RTL differs from the golden or cycle "
                                   "model; a missed timing target is reported, status 0.")
    p.add_argument("--no-synth", action="store_true", help="skip the bitstream build")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("results", help="the results tables, from build/ JSON",
                       description="Render the results tables from build/bench/*.json and "
                                   "build/synth/*/report.json (markdown).")
    p.add_argument("--update", action="store_true",
                   help="rewrite docs/results.md and the README's summary table (between its "
                        "results markers)")
    p.set_defaults(func=cmd_results)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.time()
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"spatten {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if getattr(args, "verbose", False):
        print(f"({time.time() - t0:.1f} s)")
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
