"""One short line per relay event for the activity pane: what happened, to whom, and the
remote reply or reason first, so the part that matters survives a narrow terminal."""

from __future__ import annotations

import json
import time
from typing import Any

WHO = ("to", "source", "file", "client", "action")  # whom or what it was about
WHY = ("reply", "reason", "error", "outcome")  # what was said about it
QUIET = {"time", "event", "id", "from", "ids", "mailroot", "pid", "next_attempt", "tls",
         "auth", "host", "port"}


def _text(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(f"<{v}>" if "@" in str(v) else str(v) for v in value[:2])
        return shown + (f" +{len(value) - 2}" if len(value) > 2 else "")
    if isinstance(value, str):
        return value
    return json.dumps(value)


def activity_line(event: dict[str, Any]) -> str:
    """`12:00:01 deferred <a@b.example> 451 4.7.1 try later · mx.b.example · retry 12:05 · id`"""
    name = event.get("event", "?")
    parts = [time.strftime("%H:%M:%S", time.localtime(event.get("time", 0))), name]
    parts += [_text(event[k]) for k in WHO if event.get(k)]
    parts += [_text(event[k]) for k in WHY if event.get(k)]
    extra = []
    if name == "smtp-listening":
        extra.append(f"{event.get('host')}:{event.get('port')}"
                     + "".join(f" {f}" for f in ("tls", "auth") if event.get(f)))
    elif event.get("host"):
        extra.append(f"via {event['host']}" + (" TLS" if event.get("tls") else ""))
    if event.get("next_attempt"):
        when = time.strftime("%H:%M:%S", time.localtime(float(event["next_attempt"])))
        extra.append(f"retry {when}")
    if event.get("ids"):
        extra.append(f"{len(event['ids'])} message(s)")
    extra += [f"{k}={_text(v)}" for k, v in event.items()
              if k not in QUIET and k not in WHO and k not in WHY and v not in (None, "")]
    if event.get("id"):
        extra.append(f"id {event['id']}")
    return " ".join(parts) + "".join(f" · {e}" for e in extra)
