"""events_since: the events of a time span, read backwards only as far as needed."""

from __future__ import annotations

import json

import pytest

from relay.events import LOG_NAME, events_since


@pytest.mark.parametrize("block", [1, 37, 4096, 1 << 20])
@pytest.mark.parametrize("since", [0, 1, 500, 999, 1000])
def test_every_event_since_the_time_and_none_before(tmp_path, block, since):
    with (tmp_path / LOG_NAME).open("w") as log:
        for n in range(1000):
            log.write(json.dumps({"time": n, "event": "x", "pad": "y" * (n % 70)}) + "\n")
    assert [e["time"] for e in events_since(tmp_path, since, block=block)] == list(
        range(since, 1000))


def test_stops_at_the_given_end_and_skips_a_torn_line(tmp_path):
    lines = [json.dumps({"time": n, "event": "x"}) + "\n" for n in range(10)]
    data = "".join(lines[:5]) + "{not json\n" + "".join(lines[5:])
    (tmp_path / LOG_NAME).write_text(data)
    end = len(data) - len(lines[-1])
    assert [e["time"] for e in events_since(tmp_path, 3, end=end, block=16)] == list(range(3, 9))


def test_no_log_no_events(tmp_path):
    assert list(events_since(tmp_path, 0)) == []
