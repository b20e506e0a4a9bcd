"""The Makefile: `make help` lists every target with one line, and the pytest markers its
targets select on are registered and carried by at least one test each."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = (ROOT / "Makefile").read_text()

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _targets() -> list[str]:
    (phony,) = re.findall(r"^\.PHONY:(.*)$", MAKEFILE, re.MULTILINE)
    return phony.split()


def test_help_lists_every_target_once():
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    listed = [line.split()[1] for line in r.stdout.splitlines()]
    assert sorted(listed) == sorted(_targets()), r.stdout
    for line in r.stdout.splitlines():
        assert re.fullmatch(r"make [a-z-]+ +\S.{5,}", line) and len(line) <= 100, line
    # every target is defined with a rule (a help line cannot list one that does not exist)
    for target in _targets():
        assert re.search(rf"^{re.escape(target)}:", MAKEFILE, re.MULTILINE), target


_COLLECT = """
import collections, json, sys, pytest
class Collect:
    def pytest_collection_modifyitems(self, items):
        self.marked = collections.Counter(m.name for i in items for m in i.iter_markers())
        self.nodeids = [i.nodeid for i in items]
plugin = Collect()
rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[1]], [plugin])
print("COLLECTED", json.dumps({"marked": plugin.marked, "nodeids": plugin.nodeids}))
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def collected():
    """The markers of the whole suite's tests (counts) and their node ids, from one collection
    (with --strict-markers an unregistered marker fails it)."""
    r = subprocess.run([sys.executable, "-c", _COLLECT, str(ROOT / "tests")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.rsplit("COLLECTED ", 1)[1])


def test_markers_the_makefile_selects_on_are_used(collected):
    expressions = re.findall(r'-m "([^"]+)"', MAKEFILE)
    assert expressions, "no -m expression in the Makefile"
    markers = {w for e in expressions for w in re.findall(r"\w+", e)} - {"not", "and", "or"}
    assert markers == {"synth", "slow"}
    for marker in sorted(markers):
        assert collected["marked"].get(marker, 0) > 0, f"no test is marked {marker!r}"


def test_every_slow_entry_names_a_test(collected):
    from conftest import SLOW_TESTS, slow_entry

    matched = {slow_entry(n) for n in collected["nodeids"]}
    assert [e for e in SLOW_TESTS if e not in matched] == []
    assert collected["marked"]["slow"] == sum(e is not None for e in
                                              map(slow_entry, collected["nodeids"]))
