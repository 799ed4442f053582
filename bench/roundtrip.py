"""A TCP proxy on 127.0.0.1 that adds a round trip: the internet's 20-200 ms between a relay
and a real MX, on loopback. Each chunk is held half the round trip each way, in order."""

from __future__ import annotations

import asyncio


async def delayed_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       delay: float) -> None:
    """Forward what `reader` gets to `writer`, each chunk `delay` seconds late, in order."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def later() -> None:
        while True:
            due, chunk = await pending.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not chunk:
                writer.close()
                return
            writer.write(chunk)
            await writer.drain()

    sending = asyncio.create_task(later())
    while chunk := await reader.read(65536):
        pending.put_nowait((loop.time() + delay, chunk))
    pending.put_nowait((loop.time() + delay, b""))
    await sending


async def proxy(target: int, one_way: float) -> asyncio.Server:
    """A TCP proxy on 127.0.0.1 to `target` that adds `one_way` seconds each way."""
    async def session(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        try:
            await asyncio.gather(delayed_pipe(client_r, server_w, one_way),
                                 delayed_pipe(server_r, client_w, one_way),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # the run is over
            client_w.close()
            server_w.close()

    return await asyncio.start_server(session, "127.0.0.1", 0)
