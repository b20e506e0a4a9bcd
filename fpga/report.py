"""Reading what the tools wrote: nextpnr's `--report` JSON and log, and Yosys' cell statistics.

- `parse_nextpnr(report, log)`: Fmax per clock, utilization per cell type and, per clock, the
  critical path as a few readable lines;
- `parse_yosys_stat(log)`: the cell counts of Yosys' last `stat` (the synthesized netlist);
- `format_table(report)`: the table `spatten.fpga.build` prints, from the dict it returns;
- `congestion_by_unit(csv_text, depth)`: nextpnr router2's congestion-by-net heatmap
  (``--router2-heatmap PREFIX`` writes ``PREFIX_congestion_by_net_N.csv``) summed per unit.

In nextpnr's log the "Max frequency" line appears twice (after placement and after routing);
the last one is the result.
"""

import json
import re
from pathlib import Path

__all__ = ["IMPORTANT_CELLS", "parse_nextpnr", "parse_fmax_log", "parse_router2",
           "parse_utilization_log", "router2_best", "router2_stalled", "critical_path_from_json",
           "critical_path_from_log", "parse_yosys_stat", "synth_summary", "format_table",
           "load_json", "congestion_by_unit"]

#: Cell types worth a row in the table, per family, in this order.
IMPORTANT_CELLS = {
    "ecp5": ["TRELLIS_COMB", "TRELLIS_FF", "TRELLIS_RAMW", "DP16KD", "MULT18X18D", "ALU54B",
             "TRELLIS_IO", "EHXPLLL", "DCCA"],
    "ice40": ["ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_SPRAM", "ICESTORM_DSP", "SB_IO",
              "ICESTORM_PLL", "SB_GB"],
}

#: Rows shown even when nothing of that type is used (LUTs and flip-flops).
ALWAYS_SHOWN = {"TRELLIS_COMB", "TRELLIS_FF", "ICESTORM_LC"}

#: Segments of a critical path listed after its source and sink (the slowest ones).
PATH_SEGMENTS = 5


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())


def parse_fmax_log(log: str) -> dict:
    """{clock: {"achieved", "constraint", "pass"}} from the last "Max frequency" line of each."""
    result = {}
    pattern = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz"
                         r"\s+\((PASS|FAIL) at ([\d.]+) MHz\)")
    for clock, achieved, verdict, constraint in pattern.findall(log):
        result[clock] = {"achieved": float(achieved), "constraint": float(constraint),
                         "pass": verdict == "PASS"}
    return result


def parse_router2(log: str) -> list[int]:
    """Overused wires after each router2 iteration (``iter=N wires=W overused=O`` lines), in
    order; empty for router1 or before routing."""
    return [int(o) for o in re.findall(r"iter=\d+ wires=\d+ overused=(\d+)", log)]


def parse_utilization_log(log: str) -> dict:
    """{cell type: {"used", "available"}} from the "Device utilisation" block of a nextpnr log
    (printed after packing, so present in the log of a build that did not route)."""
    start = log.find("Device utilisation")
    if start < 0:
        return {}
    util = {}
    for line in log[start:].splitlines()[1:]:
        m = re.match(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%\s*$", line)
        if not m:
            if util:
                break
            continue
        util[m.group(1)] = {"used": int(m.group(2)), "available": int(m.group(3))}
    return util


def router2_best(overused: list[int]) -> tuple[int, int]:
    """(fewest overused wires, the 1-based iteration that first had them)."""
    best = min(overused)
    return best, overused.index(best) + 1


def router2_stalled(overused: list[int], patience: int, *, floor: int = 200,
                    gain: float = 0.1) -> bool:
    """Whether router2 has stopped converging: after more than `patience` iterations, the fewest
    overused wires so far are still at least `floor` and not `gain` (10 %) below the fewest of
    `patience` iterations earlier. (A build that routes keeps falling, or lingers at a handful
    of wires, below `floor`, before its last iteration: the half-size pipeline spent its
    iterations 59-69 at 1-2.)"""
    if patience <= 0 or len(overused) <= patience:
        return False
    best = min(overused)
    return best >= floor and best > (1 - gain) * min(overused[:-patience])


def _cell_port(end: dict) -> str:
    return f"{end.get('cell', '?')}.{end.get('port', '?')}"


def critical_path_from_json(report: dict, clock: str, segments: int = PATH_SEGMENTS) -> list:
    """The critical path of `clock` (posedge to posedge) from nextpnr's report, as lines:
    total delay, source, sink, then the `segments` slowest segments. Empty if there is none."""
    for path in report.get("critical_paths", []):
        if path.get("from") != f"posedge {clock}" or path.get("to") != f"posedge {clock}":
            continue
        steps = path.get("path", [])
        if not steps:
            return []
        total = sum(s.get("delay", 0.0) for s in steps)
        logic = sum(s.get("delay", 0.0) for s in steps if s.get("type") != "routing")
        lines = [f"{total:.2f} ns in {len(steps)} steps ({logic:.2f} ns logic, "
                 f"{total - logic:.2f} ns routing)",
                 f"source: {_cell_port(steps[0].get('from', {}))}",
                 f"sink:   {_cell_port(steps[-1].get('to', {}))}"]
        slow = sorted(steps, key=lambda s: -s.get("delay", 0.0))[:segments]
        for s in sorted(slow, key=steps.index):
            what = s.get("net") or s.get("to", {}).get("cell", "?")
            lines.append(f"{s.get('type', '?')} {s.get('delay', 0.0):.2f} ns: {what}")
        return lines
    return []


def critical_path_from_log(log: str, clock: str, segments: int = PATH_SEGMENTS) -> list:
    """The same lines as `critical_path_from_json`, read from the last "Critical path report for
    clock '<clock>'" block of a nextpnr log (for runs without `--report`)."""
    head = f"Critical path report for clock '{clock}'"
    start = log.rfind(head)
    if start < 0:
        return []
    block = []
    for line in log[start:].splitlines()[2:]:
        body = line[len("Info:"):] if line.startswith("Info:") else line
        if not body.strip():
            break
        block.append(body)
    step_re = re.compile(r"^\s*([\w-]+)\s+([\d.]+)\s+([\d.]+)\s+(Source|Net)\s+(\S+)")
    sink_re = re.compile(r"^\s*Sink\s+(\S+)")
    steps, sinks, summary = [], [], ""
    for body in block:
        if (match := step_re.match(body)):
            kind, delay, _, _, name = match.groups()
            steps.append((kind, float(delay), name))
        elif (match := sink_re.match(body)):
            sinks.append(match.group(1))
        elif "ns logic" in body:
            summary = body.strip()
    if not steps:
        return []
    total = sum(d for _, d, _ in steps)
    lines = [f"{total:.2f} ns in {len(steps)} steps ({summary})",
             f"source: {steps[0][2]}",
             f"sink:   {sinks[-1] if sinks else steps[-1][2]}"]
    slow = sorted(range(len(steps)), key=lambda i: -steps[i][1])[:segments]
    for i in sorted(slow):
        kind, delay, name = steps[i]
        lines.append(f"{kind} {delay:.2f} ns: {name}")
    return lines


def parse_nextpnr(report: dict, log: str = "") -> dict:
    """Fmax, utilization and critical paths from nextpnr's `--report` dict (and its log).

    Returns {"fmax": {clock: {"achieved", "constraint", "pass"}},
             "utilization": {cell type: {"used", "available"}},
             "critical_paths": {clock: [line, ...]}} with every clock nextpnr timed.
    """
    fmax = {}
    for clock, entry in report.get("fmax", {}).items():
        achieved, constraint = float(entry["achieved"]), float(entry["constraint"])
        fmax[clock] = {"achieved": achieved, "constraint": constraint,
                       "pass": achieved >= constraint}
    if not fmax and log:
        fmax = parse_fmax_log(log)
    utilization = {cell: {"used": int(v["used"]), "available": int(v["available"])}
                   for cell, v in report.get("utilization", {}).items()}
    paths = {}
    for clock in fmax:
        lines = critical_path_from_json(report, clock)
        if not lines and log:
            lines = critical_path_from_log(log, clock)
        paths[clock] = lines
    return {"fmax": fmax, "utilization": utilization, "critical_paths": paths}


def parse_yosys_stat(log: str) -> dict:
    """{cell type: count} of the last `stat` in a Yosys log (its design-hierarchy total)."""
    start = log.rfind("Printing statistics")
    if start < 0:
        return {}
    block = log[start:]
    hier = block.find("=== design hierarchy ===")
    if hier >= 0:
        block = block[hier:]
    end = re.search(r"^\d+(\.\d+)*\. Executing", block, re.MULTILINE)
    if end:
        block = block[:end.start()]
    cells = {}
    for count, name in re.findall(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]*)\s*$", block, re.MULTILINE):
        cells[name] = int(count)
    return cells


def synth_summary(cells: dict) -> dict:
    """LUT4 and flip-flop counts of a synthesized netlist (iCE40 or ECP5 cell names)."""
    luts = sum(n for c, n in cells.items() if c in ("LUT4", "SB_LUT4"))
    ffs = sum(n for c, n in cells.items() if c == "TRELLIS_FF" or c.startswith("SB_DFF"))
    carries = sum(n for c, n in cells.items() if c in ("CCU2C", "SB_CARRY"))
    return {"LUT4": luts, "FF": ffs, "carry": carries}


def format_table(report: dict) -> str:
    """A plain-text summary of a build report (the dict `spatten.fpga.build.build` returns):
    Fmax per clock against its constraint and the target, then used / available / percent
    for the cell types that matter on the board's family, then the critical path if any clock
    failed."""
    out = []
    title = f"{report.get('top', '?')} on {report.get('board', '?')} ({report.get('device', '?')})"
    if report.get("config"):
        title += f", config {report['config']}"
    out.append(title)
    target = report.get("target_mhz")
    if not report.get("routed", True):
        over = report.get("router2_overused") or [0]
        est = report.get("placer_estimate_mhz", {})
        best, at = router2_best(over)
        out.append(f"NOT ROUTED: router2 stalled ({best} overused wires at best, iteration "
                   f"{at} of {len(over)}); placed design below"
                   + (f"; nextpnr's estimate after placement {est['sync']:.2f} MHz"
                      if "sync" in est else ""))
    if report.get("fmax_mhz"):
        out.append(f"{'clock':<16}{'Fmax MHz':>10}{'constraint':>12}{'target':>9}  result")
    for clock, f in report.get("fmax_mhz", {}).items():
        verdict = "PASS" if f["achieved"] >= f["constraint"] else "FAIL"
        tgt = f"{target:9.2f}" if (clock == "sync" and target) else f"{'':9}"
        out.append(f"{clock:<16}{f['achieved']:10.2f}{f['constraint']:12.2f}{tgt}  {verdict}")
    family = report.get("family", "")
    util = report.get("utilization", {})
    out.append(f"{'cell':<16}{'used':>10}{'available':>12}{'percent':>9}")
    order = IMPORTANT_CELLS.get(family) or sorted(util)
    for cell in order:
        if cell not in util:
            continue
        used, avail = util[cell]["used"], util[cell]["available"]
        if used == 0 and cell not in ALWAYS_SHOWN:
            continue
        pct = 100.0 * used / avail if avail else 0.0
        out.append(f"{cell:<16}{used:10d}{avail:12d}{pct:8.1f}%")
    synth = report.get("synth", {})
    if synth:
        out.append(f"synthesized: {synth.get('LUT4', 0)} LUT4, {synth.get('FF', 0)} FF, "
                   f"{synth.get('carry', 0)} carry cells")
    if report.get("critical_path"):
        out.append("critical path (sync):")
        out.extend(f"  {line}" for line in report["critical_path"])
    if report.get("bitstream"):
        out.append(f"bitstream: {report['bitstream']}  ({report.get('build_seconds', 0):.1f} s)")
    return "\n".join(out)


def congestion_by_unit(csv_text: str, depth: int = 3) -> list[tuple[str, int, float]]:
    """Overuse of a router2 congestion-by-net file (lines ``net,overuse``) summed per unit: the
    first `depth` dotted parts of each net name (``dut.unit.pv.F3[2]`` -> ``dut.unit.pv`` at
    depth 3; Yosys' ``$``-suffixes dropped). Returns (unit, overuse, share), largest first."""
    totals: dict[str, int] = {}
    for line in csv_text.splitlines():
        name, _, value = line.rpartition(",")
        if not value.strip().isdigit():
            continue
        unit = ".".join(re.sub(r"\$.*", "", name).split(".")[:depth])
        totals[unit] = totals.get(unit, 0) + int(value)
    whole = sum(totals.values()) or 1
    return sorted(((u, v, v / whole) for u, v in totals.items()), key=lambda t: -t[1])
