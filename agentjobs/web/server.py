"""`agentjobs ui`: bind, decide on the access token, serve with uvicorn until Ctrl-C/SIGTERM."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from agentjobs.clock import Clock
from agentjobs.store import Store
from agentjobs.web import security


def serve(
    open_store: Callable[[], Store],
    *,
    host: str,
    port: int,
    read_only: bool,
    jobs_dir: Path | None,
    clock: Clock,
    say: Callable[[str], None],
    poll_interval: float = 1.0,
) -> None:
    """Serve the dashboard on `host`:`port` (0: any free port; the address is printed).
    A loopback host needs no token; any other address gets the access token (made and
    printed once, then kept 0600 in the state's local directory)."""
    import uvicorn

    from agentjobs.web.app import create_app

    store = open_store()
    token = None
    if not security.is_loopback(host):
        token, created = security.load_or_create_token(store.local_dir)
        path = security.token_path(store.local_dir)
    listener = _bind(host, port)
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    say(f"serving {store.describe()} on {url}{' (read-only)' if read_only else ''}")
    if token is not None:
        if created:
            say(f"access token (shown once; kept in {path}): {token}")
            say(f"open {url}login?token={token}")
        else:
            say(f"access token: in {path}; open {url}login?token=<the token>")
    app = create_app(
        lambda: store,
        read_only=read_only,
        token=token,
        jobs_dir=jobs_dir,
        clock=clock,
        poll_interval=poll_interval,
        warm=True,
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=2,  # open event streams would hold a shutdown forever
    )
    uvicorn.Server(config).run(sockets=[listener])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a small page's head and body are not held back by
    # Nagle's algorithm for the client's delayed ACK (40 ms a page)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        from agentjobs.errors import UserError

        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.listen(128)
    listener.set_inheritable(True)
    return listener
