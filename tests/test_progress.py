"""Progress displays (`spatten.progress`): a live line on a terminal, few whole lines in a log."""

import io

import pytest

from spatten.progress import LOG_INTERVAL, LogProgress, is_terminal, progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_of_a_build_with_phases_has_a_line_per_phase_and_one_a_minute():
    """The FPGA build's loop: the stage polled every 250 ms for 20 minutes, five stages (one
    seen twice), in a log: a line per new stage, one a minute while a stage lasts, no CR."""
    clock, out = FakeClock(), io.StringIO()
    bar = progress(None, "ulx3s-85f topk: elaborating", stream=out, clock=clock)
    assert isinstance(bar, LogProgress)
    stages = [(0, "elaborating"), (30, "yosys"), (150, "nextpnr"), (160, "nextpnr: placing"),
              (700, "nextpnr"), (701, "nextpnr: placing"), (900, "nextpnr: routing"),
              (1190, "packing")]
    polls = 0
    for tick in range(20 * 60 * 4):
        clock.now = 1000.0 + tick / 4
        stage = [s for t, s in stages if t <= tick / 4][-1]
        bar.set_description_str(f"ulx3s-85f topk: {stage}")
        polls += 1
    clock.now = 1000.0 + 20 * 60
    bar.set_description_str("ulx3s-85f topk: done", refresh=False)
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and polls == 4800
    # 1 start + 5 new stages + 1 end, and a line each minute a stage lasted without one
    assert lines[0] == "ulx3s-85f topk: elaborating [00:00]"
    assert lines[-1] == "ulx3s-85f topk: done [20:00]"
    assert "ulx3s-85f topk: nextpnr: placing [02:40]" in lines
    assert "ulx3s-85f topk: nextpnr: routing [15:00]" in lines
    # placing from 2:40 to 15:00: a line at each minute after its last one, not on its
    # return at 11:41 (seen before)
    placing = [ln for ln in lines if "placing" in ln]
    assert placing[:3] == ["ulx3s-85f topk: nextpnr: placing [02:40]",
                           "ulx3s-85f topk: nextpnr: placing [03:40]",
                           "ulx3s-85f topk: nextpnr: placing [04:40]"]
    gaps = [b - a for a, b in zip(_seconds(lines), _seconds(lines)[1:], strict=False)]
    assert max(gaps) <= LOG_INTERVAL
    assert len(lines) == 24, lines          # 20 minutes: never more than a line a minute + 6
    assert len(lines) <= 20 + 1 + 5 + 1


def _seconds(lines):
    out = []
    for ln in lines:
        mm, ss = ln.rsplit("[", 1)[1].split("]")[0].split(":")
        out.append(int(mm) * 60 + int(ss))
    return out


def test_log_of_a_counted_loop():
    """A benchmark's loop of 500 points, 1 s each: start, one line a minute, the end."""
    clock, out = FakeClock(), io.StringIO()
    bar = LogProgress(500, "top-k RTL", unit="point", stream=out, clock=clock)
    for _ in range(500):
        clock.now += 1
        bar.update(1)
    bar.close()
    bar.close()                             # once only
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "top-k RTL: 0/500 point [00:00]"
    assert lines[1] == "top-k RTL: 60/500 point [01:00]"
    assert lines[-1] == "top-k RTL: 500/500 point [08:20] done"
    assert len(lines) == 1 + 8 + 1


def test_terminal_gets_a_live_tqdm_line():
    out = Terminal()
    assert is_terminal(out) and not is_terminal(io.StringIO())
    bar = progress(3, "points", stream=out)
    assert not isinstance(bar, LogProgress)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert out.getvalue().startswith("\rpoints:   0%|")      # redrawn in place, then cleared
    status = progress(None, "board x: yosys", stream=out)
    status.set_description_str("board x: done", refresh=False)
    status.close()
    assert out.getvalue().endswith("\rboard x: done [00:00] \n")    # left on the screen


def test_default_stream_is_stderr_read_when_writing(capsys):
    bar = progress(2, "points")             # stderr captured by pytest: not a terminal
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == "points: 0/2 it [00:00]\npoints: 2/2 it [00:00] done\n"


@pytest.mark.parametrize("kwargs,msg", [({"total": -1}, "total must be"),
                                        ({"total": 2.5}, "total must be"),
                                        ({"total": True}, "total must be"),
                                        ({"total": 3, "interval": 0}, "interval must be")])
def test_bad_parameters(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        LogProgress(desc="x", stream=io.StringIO(), **kwargs)
