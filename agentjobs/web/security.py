"""Who may use the dashboard, and proof that a POST came from one of its own forms.

- Bound to a loopback address, the server needs no token (the machine's users are the ones who
  can reach it); requests must then name a loopback host (`Host:`), which stops a page on some
  web site from reaching it through DNS rebinding.
- Bound to any other address, every request needs the access token: generated once
  (`secrets.token_urlsafe`), printed once, kept 0600 in the state's local directory
  (`ui-token`). It comes as `Authorization: Bearer TOKEN` (scripts, curl) or as the session
  cookie that `/login?token=TOKEN` sets (browsers); the cookie holds an HMAC of the token,
  not the token itself.
- Page actions (replay, resolve, run; approve, reject, retry in the review inbox) are forms
  with a CSRF token: an HMAC, under a key made at start-up, of a random value kept in a
  SameSite=Strict cookie (a form from before a restart is refused: reload it). The JSON
  API's POST takes a bearer token, or a JSON body (which a cross-site page cannot send
  without a CORS preflight, which is never granted), and refuses any request whose `Origin`
  is another site.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

TOKEN_FILE = "ui-token"
SESSION_COOKIE = "agentjobs_session"
CSRF_COOKIE = "agentjobs_csrf"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine's loopback only."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a `Host:` header, without its port (`[::1]:8080` -> `::1`)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def token_path(local_dir: Path) -> Path:
    return local_dir / TOKEN_FILE


def load_or_create_token(local_dir: Path) -> tuple[str, bool]:
    """The access token and whether it was just made. Made once: written 0600 (temp file,
    fsync, rename), so a second `agentjobs ui` uses the same one and never prints it."""
    path = token_path(local_dir)
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # someone loosened it: the token is a password
        return existing, False
    token = secrets.token_urlsafe(32)
    local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(local_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return token, True


def session_value(token: str) -> str:
    """What the session cookie holds: an HMAC of the token (the token never sits in a
    cookie jar)."""
    return hmac.new(token.encode(), b"agentjobs ui session", hashlib.sha256).hexdigest()


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Csrf:
    """CSRF tokens bound to a per-browser random cookie and a key made at start-up."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(24)

    def token(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def valid(self, cookie: str | None, token: str | None) -> bool:
        if not cookie or not token:
            return False
        return hmac.compare_digest(self.token(cookie).encode(), token.encode())
