"""Render the README's results section from the benchmark and synthesis JSON under build/.

`spatten results` prints the markdown; `spatten results --update-readme` rewrites the part of
README.md between the ``<!-- results:begin -->`` and ``<!-- results:end -->`` markers, so that
no number in the README is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SYNTH_CELLS = {
    "ulx3s-85f": [("TRELLIS_COMB", "LUT4 + carry (TRELLIS_COMB)"), ("TRELLIS_FF", "flip-flops"),
                  ("DP16KD", "block RAM (DP16KD)"), ("MULT18X18D", "multipliers (MULT18X18D)")],
    "icebreaker": [("ICESTORM_LC", "logic cells (ICESTORM_LC)"),
                   ("ICESTORM_RAM", "block RAM (ICESTORM_RAM)"),
                   ("ICESTORM_DSP", "DSP (ICESTORM_DSP)")],
}


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def topk_table(bench: dict) -> str:
    lines = [
        f"Top-k engine, P = {bench['lanes']}, {bench['value_width']}-bit values, capacity "
        f"{bench['capacity']}, {bench['points'][0]['trials']} random inputs per point "
        f"(seed {bench['seed']}, RTL cycle counters from {bench['sim']}); cycles in units of n/P:",
        "",
        "| inputs | n | k | select (RTL) | total latency (RTL) "
        "| random pivot (paper's engine, model) "
        "| speed-up | cycle model | statistical mode: selected / k |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for p in bench["points"]:
        model = "exact" if p["model_mismatches"] == 0 else f"{p['model_mismatches']} differ"
        lines.append(
            f"| {p.get('dist', 'uniform')} | {p['n']} | {p['k']} "
            f"| {p['select_per_nP']:.2f} ± {p['select_per_nP_std']:.2f} "
            f"| {p['total_per_nP']:.2f} ± {p['total_per_nP_std']:.2f} "
            f"| {p['random_pivot_per_nP']:.2f} ± {p['random_pivot_per_nP_std']:.2f} "
            f"| {p['speedup_vs_random_pivot']:.2f}x | {model} "
            f"| {p['statistical']['count_over_k_mean']:.2f} ± "
            f"{p['statistical']['count_over_k_std']:.2f} |")
    return "\n".join(lines)


def synth_table(reports: list[dict]) -> str:
    from spatten.fpga.report import router2_best

    lines = ["| board | unit | config | Fmax (MHz) | target (MHz) | resources used / available "
             "| built from |",
             "|---|---|---|---:|---:|---|---|"]
    for r in reports:
        fm = r.get("fmax_mhz", {}).get("sync", {})
        util = r.get("utilization", {})
        cells = []
        for key, label in SYNTH_CELLS.get(r.get("board"), []):
            if key in util:
                cells.append(f"{label} {util[key]['used']} / {util[key]['available']}")
        if r.get("routed", True):
            fmax = f"{fm.get('achieved', 0):.1f}"
        else:                       # router2 stalled: the placed design, no Fmax
            best, _ = router2_best(r.get("router2_overused") or [0])
            est = r.get("placer_estimate_mhz", {}).get("sync")
            fmax = (f"not routed ({best / 1000:.1f}k wires overused"
                    + (f"; placer estimate {est:.1f}" if est else "") + ")")
        src = r.get("source") or {}
        built = (f"{src['commit']}{' (modified)' if src.get('modified') else ''}"
                 if src.get("commit") else "(not recorded)")
        lines.append(f"| {r.get('board')} | {r.get('top')} | {r.get('config')} "
                     f"| {fmax} | {r.get('target_mhz', fm.get('constraint', 0)):.1f} "
                     f"| {'; '.join(cells)} | {built} |")
    return "\n".join(lines)


def attention_tables(bench: dict) -> str:
    """The accuracy and utilization tables of `spatten bench attention`, as markdown."""
    from spatten.sim.benchmarks.bench_attention import markdown

    return markdown(bench)


def dram_tables(bench: dict) -> str:
    """The traffic/quality tables and the RTL cycle table of `spatten bench dram`."""
    from spatten.sim.benchmarks.bench_dram import table
    from spatten.sim.benchmarks.bench_dram_rtl import rtl_table

    parts = ["Progressive quantization (`spatten bench dram`): DRAM bytes and quality against the "
             "float model, every layer's attention through the bit-exact golden model of the "
             "memory side and the pipeline:", "", "```", table(bench).rstrip(), "```"]
    if "rtl" in bench:
        parts += ["", rtl_table(bench["rtl"])]
    return "\n".join(parts)


def render(build: Path = Path("build")) -> str:
    parts = []
    bench = _load(build / "bench" / "topk.json")
    if bench:
        parts.append(topk_table(bench))
        parts.append("")
        parts.append("![top-k cycles](docs/topk-bench.png)")
    else:
        parts.append("(run `make bench` to measure)")
    attn = _load(build / "bench" / "attention.json")
    if attn:
        parts.append("")
        parts.append(attention_tables(attn))
        parts.append("")
        parts.append("![attention accuracy and utilization](docs/attention-bench.png)")
    dram = _load(build / "bench" / "dram.json")
    if dram:
        parts.append("")
        parts.append(dram_tables(dram))
        parts.append("")
        parts.append("![bytes against quality](docs/dram-bench.png)")
    reports = [r for r in (_load(p) for p in sorted(build.glob("synth/*/report.json"))) if r]
    parts.append("")
    if reports:
        parts.append("FPGA builds (`make synth`; the unit behind a board top that drives every "
                     "input from an LFSR and folds every output into the LEDs, so nothing is "
                     "optimised away; the harness is included in the counts):")
        parts.append("")
        parts.append(synth_table(reports))
    else:
        parts.append("(run `make synth` for Fmax and utilization)")
    return "\n".join(parts)


def update_readme(readme: Path = Path("README.md"), build: Path = Path("build")) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{render(build)}\n{END}{tail}")
    for name in ("topk", "attention", "dram"):
        png = build / "bench" / f"{name}.png"
        if png.is_file():
            Path("docs").mkdir(exist_ok=True)
            Path(f"docs/{name}-bench.png").write_bytes(png.read_bytes())
