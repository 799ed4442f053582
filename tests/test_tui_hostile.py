"""Issue: abusive clients — the console's status line shows refusals per minute and stress
mode, from the embedded relay's own events."""

from __future__ import annotations

import asyncio
import html
import re

from relay.core import config_loader
from tests.test_tui import SIZE, until
from tui.app import ConsoleApp


def visible(svg: str) -> str:
    """The text of a screenshot, run by run."""
    return "\n".join(html.unescape(t).replace("\xa0", " ")
                     for t in re.findall(r">([^<]*)</text>", svg))


async def connect(port: int, source: str) -> tuple[asyncio.StreamWriter, bytes]:
    """A connection from `source` and its first reply line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return writer, await asyncio.wait_for(reader.readline(), 10)


async def test_status_line_shows_refusals_per_minute_and_stress(write_config) -> None:
    config = {"smtp": {"max_connections": 2, "limits": {"per_client_connections": 1}}}
    app = ConsoleApp(config_loader.load(write_config(config)))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)

        def status() -> str:
            return str(app.dashboard.query_one("#status-line").render())

        assert "refused" not in status() and "STRESS" not in status()
        port = app.relay.addresses()[0][1]
        first, greeting = await connect(port, "127.0.0.2")
        assert greeting.startswith(b"220")
        refused = [await connect(port, "127.0.0.2") for _ in range(2)]
        assert all(reply.startswith(b"421") for _, reply in refused)
        second, greeting = await connect(port, "127.0.0.3")  # 2 of 2 open: stress
        assert greeting.startswith(b"220")
        await until(pilot, lambda: "refused 2/m" in status() and "STRESS" in status())
        shown = visible(app.export_screenshot())  # what an 80-column terminal shows
        assert "STRESS" in shown and "refused 2/m" in shown
        for writer in (first, second, *(w for w, _ in refused)):
            writer.close()
        await until(pilot, lambda: "STRESS" not in status())  # it ends, and the line says so
        assert "refused 2/m" in status()
