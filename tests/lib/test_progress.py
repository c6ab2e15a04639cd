"""Progress bars: a bar relayed by a launched process is drawn by the launcher, with its own rate and ETA."""

from __future__ import annotations

import io

from lib import progress


def test_a_relayed_bar_is_drawn_by_the_reader_and_closes_with_the_relayed_one(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LOOM_PROGRESS", "relay")
    stream = io.StringIO()
    bar = progress.progress(range(3, 10), total=9, initial=2, desc="loom", file=stream)
    for _ in bar:
        bar.set_postfix_str("loss 0.5", refresh=False)
    relayed = stream.getvalue().splitlines()
    assert relayed and all(line.startswith(progress.RELAY_PREFIX) for line in relayed)  # nothing drawn there
    monkeypatch.setenv("LOOM_PROGRESS", "log")  # the reader runs under papermill
    reader = progress.RelayedBar()
    assert not reader.feed("an ordinary line\n")
    assert all(reader.feed(line) for line in relayed)
    assert reader.bar is None and reader.describe() == "loom: step 9/9, loss 0.5"  # closed by the last line
    drawn = capsys.readouterr().err
    assert "loom:  22%|##2       | 2/9" in drawn and "9/9" in drawn and "loss 0.5]" in drawn
    reader.write("after the bar")
    assert capsys.readouterr().out == "after the bar\n"
