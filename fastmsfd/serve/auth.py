"""Access tokens: with a token set, every endpoint but /health (and the login form) answers 401 unless the
request carries it, as `Authorization: Bearer <token>` (clients, Prometheus) or as the cookie the login form sets
(a browser on the page). Compared in constant time. A server on anything but loopback needs a token."""
from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
from urllib.parse import parse_qs

OPEN_PATHS = ("/health", "/login")
COOKIE = "fastmsfd_token"
TOKEN_ENV = "FASTMSFD_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


TOKEN_CHARACTERS = frozenset(chr(c) for c in range(33, 127)) - set(';,"\\')  # what a cookie value may hold


def check_token(token: str | None) -> None:
    if token is not None and (len(token) < 8 or not set(token) <= TOKEN_CHARACTERS):
        raise ValueError("the access token must be at least 8 printable ASCII characters without spaces, ';', ',', "
                         "'\"' or '\\' (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")


def check_bind(host: str, token: str | None, insecure_no_token: bool = False) -> None:
    """Refuse a malformed token, and to listen beyond loopback without one (ValueError saying what to do)."""
    check_token(token)
    if token is None and not insecure_no_token and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host} without an access token: anyone who reaches the port could "
                         f"use and replace the model. Give --token (or set {TOKEN_ENV}); clients send "
                         "'Authorization: Bearer <token>'. --insecure-no-token starts it open anyway.")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()  # equal lengths: compare_digest then takes the same time for any input


def _cookie(headers: dict, name: str) -> bytes | None:
    for part in headers.get(b"cookie", b"").split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name.encode():
            return value
    return None


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fastmsfd: sign in</title>
</head><body><main><h1>fastmsfd</h1>
<form method="post" action="/login"><label for="token">access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button type="submit">sign in</button></form><p id="login-error">{error}</p></main></body></html>"""


class TokenMiddleware:
    def __init__(self, app, token: str | None):
        self.app = app
        self.expected = None if token is None else _digest(token.encode())

    def allowed(self, headers: dict) -> bool:
        auth = headers.get(b"authorization", b"")
        supplied = auth[7:].strip() if auth[:7].lower() == b"bearer " else _cookie(headers, COOKIE)
        return supplied is not None and hmac.compare_digest(_digest(supplied), self.expected)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.expected is None:
            return await self.app(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        if path == "/login":
            return await self._login(scope, receive, send)
        if path in OPEN_PATHS or self.allowed(headers):
            return await self.app(scope, receive, send)
        if b"text/html" in headers.get(b"accept", b""):  # a browser: the sign-in form, still a 401
            return await _send(send, 401, LOGIN_PAGE.format(error="").encode(), b"text/html; charset=utf-8")
        body = json.dumps({"error": "missing or wrong access token: send 'Authorization: Bearer <token>'",
                           "status": 401}).encode()
        await _send(send, 401, body, b"application/json", [(b"www-authenticate", b'Bearer realm="fastmsfd"')])

    async def _login(self, scope, receive, send):
        """GET: the form. POST: a right token sets an HttpOnly, SameSite=Strict cookie and goes to the page."""
        if scope["method"] != "POST":
            return await _send(send, 200, LOGIN_PAGE.format(error="").encode(), b"text/html; charset=utf-8")
        body, more = b"", True
        while more and len(body) < 65536:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        token = parse_qs(body.decode("latin-1")).get("token", [""])[0].encode("latin-1")
        if not hmac.compare_digest(_digest(token), self.expected):
            page = LOGIN_PAGE.format(error=html.escape("wrong token")).encode()
            return await _send(send, 401, page, b"text/html; charset=utf-8")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={token.decode('latin-1')}; HttpOnly; SameSite=Strict; Path=/{secure}".encode("latin-1")
        await _send(send, 303, b"", b"text/plain", [(b"location", b"/"), (b"set-cookie", cookie)])


async def _send(send, status: int, body: bytes, content_type: bytes, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
