"""The results pages (spatten/results.py): docs/results.md and the README's summary are rendered
from build/ JSON only, a missing measure is named with the command that makes it, and a missed
timing target reads as missed."""

import json

from spatten.results import BEGIN, END, render, summary, update


def _synth(tmp_path, name, achieved, target, routed=True):
    d = tmp_path / "synth" / name
    d.mkdir(parents=True)
    d.joinpath("report.json").write_text(json.dumps({
        "board": "ulx3s-85f", "top": name, "config": "default", "routed": routed,
        "target_mhz": target, "seed": 3,
        "fmax_mhz": {"sync": {"achieved": achieved, "constraint": target}},
        "utilization": {"TRELLIS_COMB": {"used": 10, "available": 83640}},
        "source": {"commit": "0123456789ab", "modified": False}}))


def test_nothing_measured_names_the_commands(tmp_path):
    text = render(tmp_path)
    for heading in ("## Top-k engine", "## Attention datapath",
                    "## Memory side: progressive quantization", "## FPGA builds"):
        assert heading in text
    assert text.count("run `make bench`") == 3 and "run `make synth`" in text
    assert "make bench" in summary(tmp_path)


def test_fmax_met_and_missed(tmp_path):
    _synth(tmp_path, "topk", 101.3, 100.0)
    _synth(tmp_path, "attention_fed", 60.3, 100.0)
    rows = {line.split("|")[2].split()[0]: line for line in summary(tmp_path).splitlines()[2:]}
    assert rows["topk"].endswith("| 101.3 MHz against 100: met |")
    assert rows["attention_fed"].endswith("| 60.3 MHz against 100: **missed** |")
    assert "one placer seed (3), built from 0123456789ab" in rows["topk"]


def test_not_routed_is_missed(tmp_path):
    _synth(tmp_path, "attention_fed", 0.0, 100.0, routed=False)
    assert summary(tmp_path).splitlines()[-1].endswith("not routed (target 100 MHz): **missed** |")


def test_update_writes_doc_and_readme_summary(tmp_path):
    _synth(tmp_path, "topk", 91.7, 100.0)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\nrest\n")
    doc = tmp_path / "docs" / "results.md"
    update(readme=readme, build=tmp_path, doc=doc)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\nrest\n")
    assert "old table" not in text and "91.7 MHz against 100: **missed**" in text
    page = doc.read_text()
    assert page.startswith("# Results\n") and "| ulx3s-85f | topk | default | 91.7 |" in page
