"""Drop and Badmail grow until the operator clears them: `mailroot summary` and the console
say how much disk each folder holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from relay.core import config_loader
from relay.core.folderstats import human_size, usage
from relay.core.store import BADMAIL, DROP, QUEUE, Mailroot
from relay.ops.admin import Admin
from tests.conftest import drop_file, wait_for
from tests.test_tui import SIZE, until
from tui.app import ConsoleApp

LOCAL = b"From: app@yourdomain.com\r\nTo: ops@yourdomain.com\r\nSubject: s\r\n\r\n" + b"x" * 5000
NO_RECIPIENT = b"From: app@yourdomain.com\r\nSubject: nobody to send it to\r\n\r\nhi\r\n"


def fill(proc) -> dict[str, int]:
    drop_file(proc.folder("Pickup"), "local.eml", LOCAL)
    drop_file(proc.folder("Pickup"), "bad.eml", NO_RECIPIENT)
    wait_for(lambda: proc.files(DROP, "*.eml") and proc.files(BADMAIL, "*.BAD"))
    return {folder: sum(p.stat().st_size for p in (proc.root / folder).iterdir())
            for folder in (DROP, BADMAIL)}


def test_summary_says_what_each_folder_holds(relay) -> None:
    """Queue's line comes from the pass that reads its envelopes (each envelope's length and
    the message size it records), not from a stat of every file: both must agree."""
    proc = relay({"pickup": {"settle": "0s"}, "delivery": {"retry": ["1h"] * 4}})
    sizes = fill(proc)
    remote = LOCAL.replace(b"ops@yourdomain.com", b"ops@remote.example")
    for n in range(3):
        drop_file(proc.folder("Pickup"), f"remote{n}.eml", remote + b"y" * 1000 * n)
    wait_for(lambda: len(proc.files("Queue", "*.env")) == 3 and all(
        json.loads(p.read_bytes())["attempts"] for p in proc.files("Queue", "*.env")))
    store = Mailroot(proc.root)
    shape = Admin(config_loader.load(proc.config)).summary()
    assert (shape.messages, shape.bytes) == (3, usage(store, QUEUE, time.time()).bytes) == (
        3, sum(p.stat().st_size for p in (proc.root / QUEUE).iterdir()))
    out = subprocess.run([sys.executable, "-m", "relay.cli", "summary", "-c", str(proc.config)],
                         capture_output=True, text=True, check=True).stdout
    disk = out.split("Disk used by each folder\n", 1)[1].splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in disk}
    assert rows[DROP].split()[:2] == ["1", "message"]
    assert rows[DROP].endswith(human_size(sizes[DROP]))
    assert rows[BADMAIL].split()[:2] == ["1", "message"]
    assert rows[BADMAIL].endswith(human_size(sizes[BADMAIL]))
    assert rows[QUEUE].split()[:2] == ["3", "messages"]
    assert rows[QUEUE].endswith(human_size(shape.bytes))


async def test_console_z_shows_folder_sizes(relay, tmp_path: Path) -> None:
    proc = relay({"pickup": {"settle": "0s"}})
    sizes = fill(proc)
    app = ConsoleApp(config_loader.load(proc.config))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("z")
        await until(pilot, lambda: len(app._notifications) > 0)
        text = str(list(app._notifications)[-1].message)
        assert f"Drop           1 message  {human_size(sizes[DROP]):>10}" in text
        assert f"Badmail        1 message  {human_size(sizes[BADMAIL]):>10}" in text
