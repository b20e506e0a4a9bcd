"""Render the results from the benchmark and synthesis JSON under build/: the whole set in
docs/results.md, a summary table in the README.

`spatten results` prints the full markdown; `spatten results --update` rewrites docs/results.md
and the part of README.md between the ``<!-- results:begin -->`` and ``<!-- results:end -->``
markers, so that no number in either is typed by hand. A measure whose JSON is missing is named
with the command that makes it, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
RESULTS_DOC = Path("docs/results.md")
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


def _synth_reports(build: Path) -> list[dict]:
    return [r for r in (_load(p) for p in sorted(build.glob("synth/*/report.json"))) if r]


def render(build: Path = Path("build"), images: str = "docs/") -> str:
    """Every results table, as markdown (docs/results.md without its title); `images` is the
    path of the plots relative to the page that shows them."""
    parts = ["## Top-k engine", ""]
    bench = _load(build / "bench" / "topk.json")
    if bench:
        parts += [topk_table(bench), "", f"![top-k cycles]({images}topk-bench.png)"]
    else:
        parts.append("(not measured: run `make bench`)")
    parts += ["", "## Attention datapath", ""]
    attn = _load(build / "bench" / "attention.json")
    if attn:
        parts += [attention_tables(attn), "",
                  f"![attention accuracy and utilization]({images}attention-bench.png)"]
    else:
        parts.append("(not measured: run `make bench`)")
    parts += ["", "## Memory side: progressive quantization", ""]
    dram = _load(build / "bench" / "dram.json")
    if dram:
        parts += [dram_tables(dram), "", f"![bytes against quality]({images}dram-bench.png)"]
    else:
        parts.append("(not measured: run `make bench`)")
    parts += ["", "## FPGA builds", ""]
    reports = _synth_reports(build)
    if reports:
        parts += ["`make synth`; the unit behind a board top that drives every input from an LFSR "
                  "and folds every output into the LEDs, so nothing is optimised away; the harness "
                  "is included in the counts:", "", synth_table(reports)]
    else:
        parts.append("(not built: run `make synth`)")
    return "\n".join(parts)


def _fmax_cell(r: dict) -> str:
    fm = r.get("fmax_mhz", {}).get("sync", {})
    target = r.get("target_mhz", fm.get("constraint"))
    if not r.get("routed", True) or "achieved" not in fm:
        return f"not routed (target {target:.0f} MHz): **missed**"
    verdict = "met" if target is None or fm["achieved"] >= target else "**missed**"
    return f"{fm['achieved']:.1f} MHz against {target:.0f}: {verdict}"


def summary(build: Path = Path("build")) -> str:
    """The README's short table: one headline figure per unit, each from its JSON, with a link
    to its section of docs/results.md."""
    rows = []
    doc = "docs/results.md"
    bench = _load(build / "bench" / "topk.json")
    if bench:
        big = [p for p in bench["points"] if p.get("dist", "uniform") == "uniform"
               and p["n"] == max(q["n"] for q in bench["points"])]
        p = max(big, key=lambda q: q["k"] == q["n"] // 4)
        sp = [q["speedup_vs_random_pivot"] for q in bench["points"] if q["n"] >= 1024]
        rows.append(f"| [top-k engine]({doc}#top-k-engine) | cycles per n/P, uniform n = "
                    f"{p['n']}, k = {p['k']}: selection, whole run | {p['select_per_nP']:.2f}, "
                    f"{p['total_per_nP']:.2f} ({min(sp):.2f}-{max(sp):.2f}x fewer selection "
                    "cycles than the paper's random pivot at n >= 1024) |")
    attn = _load(build / "bench" / "attention.json")
    if attn and attn.get("accuracy"):
        st = attn["accuracy"]["settings"]
        base = st[0]["layers"]
        rows.append(f"| [attention datapath]({doc}#attention-datapath) | MiniLM, every query, "
                    "no pruning: output cosine to float attention, minimum | "
                    f"{min(x['cos_min'] for x in base):.5f} |")
        pruned = [x for x in st if x["kv_keep"] is not None and x["renorm"]]
        if pruned:
            x = min(pruned, key=lambda x: abs(x["kv_keep"] - 0.3))
            rows.append(f"| [local value pruning]({doc}#attention-datapath) | MiniLM, "
                        f"{x['kv_keep']:.0%} of keys kept, renormalised: sentence-embedding "
                        f"cosine, mean | {x['embedding_cos_mean']:.5f} |")
    if attn and attn.get("utilization"):
        util = attn["utilization"]
        top = max(u["n"] for u in util)
        pair = [u for u in util if u["n"] == top and u["d"] == max(v["d"] for v in util)]
        full = [u for u in pair if u["k_v"] == u["n"]]
        cut = [u for u in pair if u["k_v"] < u["n"]]
        if full and cut:
            rows.append(f"| [query pipeline]({doc}#attention-datapath) | multiplier "
                        f"utilization, d = {full[0]['d']}, n = {top}: all keys, k_v = "
                        f"{cut[0]['k_v']} | {full[0]['utilization']:.1%}, "
                        f"{cut[0]['utilization']:.1%} |")
    dram = _load(build / "bench" / "dram.json")
    if dram:
        for key, name, metric, fmt in (("minilm", "MiniLM", "embedding_cos_mean", "cosine {:.5f}"),
                                       ("smollm2", "SmolLM2", "perplexity", "perplexity {:.3f}")):
            res = dram["models"].get(key)
            if not res or "skipped" in res:
                continue
            by = {r["label"]: r for r in res["settings"]}
            pick = by.get("8+4 tau 0 mid")
            ref = by.get("float")
            if pick and ref:
                rows.append(f"| [progressive quantization]({doc}#memory-side-progressive-"
                            f"quantization) | {name}, K as 8 MSBs (no LSB refetch): K+V DRAM "
                            "bytes against dense float32, quality against float | "
                            f"{pick['totals']['kv_reduction_vs_f32']:.2f}x less, "
                            + fmt.format(pick["quality"][metric]) + " (float "
                            + fmt.format(ref["quality"][metric]).split(" ", 1)[1] + ") |")
    for r in _synth_reports(build):
        src = (r.get("source") or {}).get("commit", "not recorded")
        # one placer seed is one sample of the placement: the row says which, so that a target
        # met is read as met at that seed, not as met (the median of seeds is a later campaign's)
        seed = r.get("seed", "?")
        rows.append(f"| [FPGA build]({doc}#fpga-builds) | {r.get('top')} ({r.get('config')}) "
                    f"on {r.get('board')}, one placer seed ({seed}), built from {src} | "
                    f"{_fmax_cell(r)} |")
    if not rows:
        return "(nothing measured yet: run `make bench` and `make synth`, then `spatten results " \
               "--update`)"
    return "\n".join(["| unit | measure | result |", "|---|---|---|", *rows])


def update(readme: Path = Path("README.md"), build: Path = Path("build"),
           doc: Path = RESULTS_DOC) -> None:
    """Rewrite `doc` (every table) and the README's summary between its markers; copy the
    benchmark plots next to `doc`."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{summary(build)}\n{END}{tail}")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("# Results\n\nGenerated by `spatten results --update` from the JSON that "
                   "`make bench` and `make synth` write under build/; do not edit by hand.\n\n"
                   + render(build, images="") + "\n")
    for name in ("topk", "attention", "dram"):
        png = build / "bench" / f"{name}.png"
        if png.is_file():
            (doc.parent / f"{name}-bench.png").write_bytes(png.read_bytes())
