"""The event log, followed: each new event feeds the status line's figures and the activity
pane, and a relay's clean stop is noted, so that its lock let go is not taken for a death.
A mixin of ConsoleApp (tui/app.py)."""

from __future__ import annotations

import itertools

from relay.ops import LOG_NAME, LogFollower, read_rotated
from tui.activity import activity_line
from tui.stats import HOUR

ACTIVITY_AT_START = 200


class EventFeed:
    def follow_events(self, first: bool = False) -> None:
        path = self.store.log_dir / LOG_NAME
        if first or self.follower is None:  # the whole last hour, however long the log
            self.follower = LogFollower.at_end(path)  # then what is appended, across rotations
            events = list(read_rotated(path, newest_first=True,
                                       since=self.clock() - HOUR))[::-1]
        else:
            events = self.follower.read()
        for event in events:
            self.stats.add(event)
            if event.get("event") == "relay-stopped" and isinstance(event.get("pid"), int):
                self.stopped_pids.add(event["pid"])
        if first:  # the latest events, from the rotated files too when the log is young
            shown = list(itertools.islice(read_rotated(path, newest_first=True),
                                          ACTIVITY_AT_START))[::-1]
        else:
            shown = events
        if shown:
            self.dashboard.activity([activity_line(e) for e in shown])
