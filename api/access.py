"""Who may call: API keys and CORS, installed on the app by ``serve_http``.

- API keys come from settings (``SERVE_API_KEYS``, ``SERVE_API_KEYS_FILE``),
  each with a name. A request offers one as ``X-Api-Token`` (the seed client's
  header) or ``Authorization: Bearer``. The offered key is compared with every
  accepted key, always, in constant time, so neither the answer nor its timing
  says which key (or which part of it) was wrong. The matched key's *name* is
  kept on ``flask.g.api_key_name`` for logs; the key itself is never logged.
- Route groups listed in ``SERVE_PUBLIC_ROUTES`` need no key.
- CORS (flask-cors) only when ``SERVE_CORS_ORIGINS`` is set; preflights need no
  key, and error responses carry the headers too so browsers can read them;
  with listed origins every answer says ``Vary: Origin``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from flask import Flask, g, request
from flask_cors import CORS

from api.stream import is_websocket_handshake, subprotocol_token
from serving.errors import Unauthorized
from serving.logs import ENV_KEY_NAME
from serving.settings import Settings

log = logging.getLogger(__name__)

# The one table of public route groups: Flask endpoint names per group. Names
# of routes other branches add (v2 health, metrics) are listed ahead of them;
# a name no route has is harmless.
PUBLIC_ROUTES: dict[str, frozenset[str]] = {
    "health": frozenset(
        {"v1.healthz", "v1.readyz", "compat.health_check", "v2.live", "v2.ready", "v2.model_ready"}
    ),
    # The /demo page and its assets: the page asks for a key itself.
    "docs": frozenset(
        {"docs.swagger", "docs.redoc", "docs.openapi_json", "docs.asset", "docs.index", "demo.page", "demo.asset"}
    ),
    "metrics": frozenset({"metrics.metrics"}),
}

# Where the app keeps its KeyRing (gunicorn.conf.py reloads it on SIGHUP).
KEY_RING = "serve_http.api_keys"

# The forecast seed's routes, open to any origin unless SERVE_CORS_ORIGINS is set.
SEED_CORS_ROUTES = [r"^/info$", r"^/forecast$", r"^/healthCheck$"]

# Headers a browser script may read from a cross-origin answer.
EXPOSED_HEADERS = ["X-Request-ID", "X-Cache", "Retry-After", "WWW-Authenticate"]


def public_endpoints(groups: list[str]) -> frozenset[str]:
    """The endpoint names open to anyone for these groups."""
    return frozenset().union(*(PUBLIC_ROUTES[group] for group in groups))


def offered_key() -> str:
    """The key the request offers: ``X-Api-Token``, else ``Authorization: Bearer``,
    else, on a WebSocket handshake only, the ``bearer.<base64url>`` subprotocol
    (browsers cannot set headers on a WebSocket; see api/stream.py)."""
    token = request.headers.get("X-Api-Token", "")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if is_websocket_handshake():
        return subprotocol_token(request.headers.get("Sec-WebSocket-Protocol", ""))
    return ""


def _fingerprint(key: str) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever
    # the offered key's length.
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()


class KeyRing:
    """The accepted keys as (name, fingerprint) pairs.

    Read when the app is built: in the Gunicorn master, before the workers
    fork, so a bad list stops start-up. ``reload()`` re-reads them; Gunicorn's
    ``on_reload`` hook calls it in the master on SIGHUP, before the new workers
    fork, so rotation is: add the new key, HUP, move clients over, remove the
    old key, HUP. A reload that finds an unreadable or invalid list keeps the
    last good keys and logs why.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = self._read()

    def _read(self) -> list[tuple[str, bytes]]:
        return [(name, _fingerprint(key)) for name, key in self.settings.named_api_keys().items()]

    def reload(self) -> bool:
        """Re-read the keys; False (and the old keys kept) if the list is bad."""
        try:
            self.keys = self._read()
        except ValueError as exc:  # the message names the file and line, never a key
            log.error("API keys not reloaded, keeping the previous ones: %s", exc)
            return False
        log.info("API keys reloaded: %s", ", ".join(name for name, _ in self.keys) or "none")
        return True


def install_auth(app: Flask, settings: Settings) -> None:
    """Require an API key on every non-public route when keys are configured."""
    ring = app.extensions[KEY_RING] = KeyRing(settings)
    public = public_endpoints(settings.public_routes)

    @app.before_request
    def authenticate() -> None:
        g.api_key_name = None
        keys = ring.keys
        if not keys or request.method == "OPTIONS" or request.endpoint in public:
            return
        offered = _fingerprint(offered_key())
        matched = None
        # Every key is compared, whatever matched before.
        for name, fingerprint in keys:
            if hmac.compare_digest(offered, fingerprint):
                matched = name
        if matched is None:
            raise Unauthorized("missing or invalid API key")
        g.api_key_name = matched
        request.environ[ENV_KEY_NAME] = matched  # the access line names the caller


def install_cors(app: Flask, settings: Settings) -> None:
    """Cross-origin headers for the allowed origins. When none is set, only the
    forecast seed's read-only routes answer any origin (``*``), as the seed did.

    Listed origins make every answer depend on the ``Origin`` header (an
    allowed one is echoed back, any other or none gets no CORS headers), so
    every answer then says ``Vary: Origin``, for caches; ``*`` is the same
    answer for all and needs none. flask-cors's own ``vary_header`` is off: it
    sends Vary only when the origin matched one of several patterns, not for
    one listed origin, nor on the answers to other origins or to none.
    """
    if not settings.cors_origins:
        CORS(app, resources=SEED_CORS_ROUTES, origins="*", send_wildcard=True, vary_header=False,
             expose_headers=EXPOSED_HEADERS, max_age=600)
        return
    wildcard = settings.cors_origins == ["*"]
    CORS(
        app,
        origins=settings.cors_origins,
        supports_credentials=settings.cors_allow_credentials,
        # "*" answers "*", not the caller's origin echoed back.
        send_wildcard=wildcard,
        # Without an Origin (not a browser's CORS request) no CORS headers:
        # flask-cors would list every origin, one Access-Control-Allow-Origin each.
        always_send=wildcard,
        vary_header=False,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
    if wildcard:
        return

    @app.after_request
    def vary_by_origin(response):
        response.vary.add("Origin")  # a header set: merged with any other Vary
        return response
