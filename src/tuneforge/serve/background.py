"""Run a served app in a background thread on a free loopback port: for tests, benchmarks and notebooks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", timeout_s: float = 60.0, log_level: str = "warning"):
    """Yield the base URL of `app` served by uvicorn on a free port; the server stops on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    # log_config=None: no log handlers bound to the caller's (possibly captured, later closed) stderr.
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server thread died while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
