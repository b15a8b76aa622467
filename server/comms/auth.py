"""Bearer-token authentication, on every comms RPC whichever way it comes in.

A JWT (RS256 or ES256 only) is checked for signature against a JWKS file, for exp/nbf with a
small leeway, for issuer and audience; its `scope` claim must hold the scope the RPC declares
in the proto ((comms.v1.required_scope)), and its optional `brand_ids` claim limits the brands
the caller may act for. Health and reflection are not comms RPCs and stay open, as do the
comms RPCs the proto declares (comms.v1.public): the HTTP health probes."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt

from comms import calls, devkeys, httpapi
from comms.config import ConfigError, Settings
from comms.errors import RpcFailure
from comms.interceptors import UnaryWrapper, unary_handler

log = logging.getLogger(__name__)

# The only accepted algorithms, each bound to the one key type it may use: never `none`,
# never an HMAC that a public key could be passed off as.
_ALGORITHM_FOR_KEY = {("RSA", None): "RS256", ("EC", "P-256"): "ES256"}
ALGORITHMS = tuple(_ALGORITHM_FOR_KEY.values())
SCOPE_CLAIM = "scope"
BRANDS_CLAIM = "brand_ids"
CHALLENGE = 'Bearer realm="comms"'


def required_scopes() -> dict[str, str]:
    """Each comms RPC that needs a token, by its full method path
    ("/comms.v1.SequenceService/CreateSequence"), and the scope it declares in the proto (""
    where it declares none). A (comms.v1.public) method is not among them."""
    return {path: method.scope for path, method in httpapi.METHODS.items() if not method.public}


@dataclass(frozen=True)
class Principal:
    """Who is calling, as their verified token says."""

    subject: str
    scopes: frozenset[str]
    brand_ids: frozenset[str] | None  # None: the token sets no brand limit

    def may_act_for(self, brand_id: str) -> bool:
        return self.brand_ids is None or brand_id in self.brand_ids


def unauthenticated(message: str) -> RpcFailure:
    """No usable token; the challenge (RFC 6750) reaches HTTP callers as WWW-Authenticate."""
    challenge = f'{CHALLENGE}, error="invalid_token"'
    return RpcFailure(
        grpc.StatusCode.UNAUTHENTICATED, message, metadata=[("www-authenticate", challenge)]
    )


def permission_denied(message: str) -> RpcFailure:
    challenge = f'{CHALLENGE}, error="insufficient_scope"'
    return RpcFailure(
        grpc.StatusCode.PERMISSION_DENIED, message, metadata=[("www-authenticate", challenge)]
    )


@dataclass(frozen=True)
class _Key:
    key: Any = field(compare=False)
    algorithm: str
    jwk: str  # the JWK as the file gives it: a kid keeps its cached tokens only while this holds


# NumericDate (RFC 7519 2) as this service takes it: whole seconds since 1970, up to the last
# second of year 9999; a string, a fraction, a bool or 1e308 is refused, not coerced.
_TIME_CLAIMS = ("exp", "nbf", "iat")
_LATEST_TIME = 253402300799
_TIME_RULE = f"an integer number of seconds from 0 to {_LATEST_TIME}"
_SHAPE = re.compile(r"[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*")  # three base64url parts


def _parse_keys(source: bytes, path: Path) -> dict[str, _Key]:
    """The usable keys of a JWKS file by kid; ValueError if it is not a JWKS holding one."""
    try:
        document = json.loads(source)
    except RecursionError:
        raise ValueError("not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError('not a JWKS: expected {"keys": [<JWK object>, ...]}')
    keys: dict[str, _Key] = {}
    for data in entries:
        algorithm = _ALGORITHM_FOR_KEY.get((data.get("kty"), data.get("crv")))
        kid = data.get("kid", "")
        if algorithm is None or data.get("alg", algorithm) != algorithm or not isinstance(kid, str):
            log.warning(
                "ignoring JWKS key %r: only RSA (RS256) and P-256 (ES256), with a string kid",
                kid,
            )
            continue
        try:
            key = jwt.PyJWK(data, algorithm).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as error:
            raise ValueError(f"key {kid!r} is not a valid {algorithm} key: {error}") from None
        keys[kid] = _Key(key, algorithm, json.dumps(data, sort_keys=True))
    if not keys:
        raise ValueError(f"{path} holds no usable RS256 or ES256 key")
    return keys


class TokenVerifier:
    """Verifies tokens against a JWKS file.

    The file is reread at most every recheck_seconds, on the verify path, and its keys taken up
    when its bytes changed: keys are added and withdrawn without a restart, and no token, not
    even one naming an unknown kid, can make the server read the file more often. (Its bytes
    are compared, not its mtime: a rewrite within a clock tick keeps mtime, size and inode.)
    A file that cannot be used (missing, half-written, not JSON, no usable key) leaves the last
    good keys in place, with one warning, as the server would have refused to start with it.

    A verified token is remembered until its exp (at most CACHE_SIZE of them, and forgotten
    when its key leaves the file or changes): a client sends the same token on every call, and
    checking its signature each time was the largest cost of a create after the database."""

    CACHE_SIZE = 4096
    RECHECK_SECONDS = 1.0

    def __init__(
        self,
        jwks_path: Path,
        issuer: str,
        audience: str,
        leeway: int = 30,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_path = jwks_path
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._source: bytes | None = jwks_path.read_bytes()
        self._keys = _parse_keys(self._source, jwks_path)
        self._checked = clock()
        # token -> (caller, until when, the kid and key that verified it)
        self._verified: OrderedDict[str, tuple[Principal, float, str, _Key]] = OrderedDict()

    def _refresh(self) -> None:
        """Under the lock: take up the file's keys if it changed since it was last read."""
        now = self._clock()
        if now - self._checked < self._recheck_seconds:
            return
        self._checked = now
        source: bytes | None = None
        keys: dict[str, _Key] | None = None
        try:
            source = self.jwks_path.read_bytes()
        except OSError as error:
            problem = str(error)
        if source == self._source:
            return  # unchanged, or still unreadable (and warned about once)
        self._source = source
        if source is not None:
            try:
                keys = _parse_keys(source, self.jwks_path)
            except ValueError as error:
                problem = str(error)
        if keys is None:
            log.warning(
                "keeping the %d keys loaded before: cannot use the JWKS file %s: %s",
                len(self._keys),
                self.jwks_path,
                problem,
            )
            return
        self._keys = keys
        for token, (_, _, kid, key) in list(self._verified.items()):
            if keys.get(kid) != key:
                del self._verified[token]
        log.info("JWKS file %s reloaded: keys %s", self.jwks_path, ", ".join(map(repr, keys)))

    def _key(self, kid: str | None) -> tuple[str, _Key]:
        with self._lock:
            keys = self._keys
        if kid is None and len(keys) == 1:
            return next(iter(keys.items()))
        if kid is None or kid not in keys:
            raise unauthenticated("token is signed by an unknown key")
        return kid, keys[kid]

    def verify(self, token: str) -> Principal:
        """The caller, or an UNAUTHENTICATED RpcFailure; nothing else escapes, whatever the
        token holds."""
        with self._lock:
            self._refresh()
            known = self._verified.get(token)
            if known is not None:
                principal, expires, _, _ = known
                if time.time() < expires:
                    self._verified.move_to_end(token)
                    return principal
                del self._verified[token]
        try:
            principal, expires, kid, key = self._check(token)
        except RpcFailure:
            raise
        except Exception as error:  # a bug: refuse the token, and log one line, not a flood
            log.error("refused a token the verifier failed on: %s: %s", type(error).__name__, error)
            raise unauthenticated("malformed bearer token") from None
        with self._lock:
            if self._keys.get(kid) != key:  # withdrawn while this token was being checked
                raise unauthenticated("token is signed by an unknown key")
            self._verified[token] = (principal, expires, kid, key)
            if len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)
        return principal

    def _check(self, token: str) -> tuple[Principal, float, str, _Key]:
        """The caller, until when the token stays valid and the key that signed it, or
        UNAUTHENTICATED."""
        algorithm, kid = _header(token)
        kid, key = self._key(kid)
        if key.algorithm != algorithm:
            raise unauthenticated(f"token algorithm {algorithm} does not match its key")
        try:
            # PyJWT checks the signature, iss and aud; the times and sub are checked below,
            # strictly: PyJWT would take "exp": "9999999999" or 1e308 (it calls int()).
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise unauthenticated(
                f"wrong audience: the token is not for {self.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise unauthenticated("wrong issuer: the token's issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as error:
            raise unauthenticated(f"token lacks the {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise unauthenticated("token signature is invalid") from None
        except jwt.InvalidTokenError:
            raise unauthenticated("malformed bearer token") from None
        expires = self._check_times(claims)
        return _principal(claims), expires + self.leeway, kid, key

    def _check_times(self, claims: dict[str, Any]) -> int:
        """exp, and nbf and iat if present, against the clock with the leeway; returns exp."""
        for name in _TIME_CLAIMS:
            value = claims.get(name, 0)
            if type(value) is not int or not 0 <= value <= _LATEST_TIME:  # bool is not int
                raise unauthenticated(f"the {name!r} claim must be {_TIME_RULE}")
        now = time.time()
        if claims["exp"] <= now - self.leeway:
            raise unauthenticated("token has expired")
        for name in ("nbf", "iat"):
            if claims.get(name, 0) > now + self.leeway:
                raise unauthenticated(f"token is not valid yet ({name} is in the future)")
        return int(claims["exp"])


def _header(token: str) -> tuple[str, str | None]:
    """The token's alg and kid, each checked to be what the JOSE header (RFC 7515 4.1) says."""
    header: Any = None
    if _SHAPE.fullmatch(token):
        segment = token.partition(".")[0].rstrip("=")
        # binascii, UnicodeDecodeError and JSON errors are all ValueErrors; deep nesting is not
        with contextlib.suppress(ValueError, RecursionError):
            header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if not isinstance(header, dict):
        raise unauthenticated("malformed bearer token: not a JWT")
    for name in ("alg", "kid", "typ"):
        if name in header and not isinstance(header[name], str):
            raise unauthenticated(f"malformed bearer token: the header's {name!r} must be a string")
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        shown = repr(
            algorithm if algorithm is None or len(algorithm) <= 20 else algorithm[:20] + "..."
        )
        raise unauthenticated(
            f"token algorithm {shown} is not accepted: use {' or '.join(ALGORITHMS)}"
        )
    if "crit" in header:  # RFC 7515 4.1.11: refuse extensions not understood; none are
        raise unauthenticated(
            "malformed bearer token: the header's 'crit' names extensions this service "
            "does not support"
        )
    return algorithm, header.get("kid")


def _principal(claims: dict[str, Any]) -> Principal:
    subject, scope = claims["sub"], claims.get(SCOPE_CLAIM, "")
    if not isinstance(subject, str) or not subject:
        # It names the caller, whose idempotency keys are its own: no two callers may share one.
        raise unauthenticated("the 'sub' claim must be a non-empty string")
    if not isinstance(scope, str):
        raise unauthenticated(f"the {SCOPE_CLAIM!r} claim must be a space-separated string")
    # Absent means no brand limit; null is not absent (it would grant every brand).
    brands = claims.get(BRANDS_CLAIM, ())
    if BRANDS_CLAIM in claims and not (
        isinstance(brands, list) and all(isinstance(b, str) for b in brands)
    ):
        raise unauthenticated(f"the {BRANDS_CLAIM!r} claim must be a list of strings")
    return Principal(
        subject=subject,
        # RFC 6749 3.3: scopes are separated by the ASCII space only, not by U+00A0 or a tab.
        scopes=frozenset(s for s in scope.split(" ") if s),
        brand_ids=frozenset(brands) if BRANDS_CLAIM in claims else None,
    )


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    values = [v for k, v in metadata if k == "authorization"]
    if not values:
        raise unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, token = str(values[0]).partition(" ")
    if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("malformed Authorization header: expected 'Bearer <token>'")
    return token.strip()


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("comms_principal")


def current_principal() -> Principal:
    """The verified caller of the RPC being served (set by AuthInterceptor)."""
    return _current.get()


@contextlib.contextmanager
def serving_as(principal: Principal) -> Iterator[None]:
    """Make principal the caller for the code run inside."""
    reset = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(reset)


def require_brand(brand_id: str) -> None:
    """Refuse a caller whose token limits it to other brands (an empty brand_id is left to
    validation, which names it as required)."""
    if brand_id and not current_principal().may_act_for(brand_id):
        raise permission_denied(f"the token may not act for brand {brand_id!r}")


class AuthInterceptor(UnaryWrapper):
    """Guards every comms RPC: a verified token carrying the RPC's declared scope. Fails
    closed: an RPC that declares no scope is refused to everyone."""

    def __init__(self, verifier: TokenVerifier) -> None:
        super().__init__()
        self._verifier = verifier
        self._scopes = required_scopes()

    def wraps(self, method: str) -> bool:
        # Not grpc.health.v1, reflection, a (comms.v1.public) method such as the HTTP health
        # probes, or an unknown one (grpc answers UNIMPLEMENTED).
        return method in self._scopes

    def wrap(self, handler: Any, method: str) -> Any:
        scope = self._scopes[method]
        serve = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                principal = self._authorize(context.invocation_metadata(), scope)
            except RpcFailure as refusal:
                context.abort_with_status(refusal.status)
            calls.note_subject(principal.subject)
            with serving_as(principal):
                return serve(request, context)

        return unary_handler(handler, guarded)

    def _authorize(self, metadata: Sequence[tuple[str, str | bytes]], scope: str) -> Principal:
        principal = self._verifier.verify(bearer_token(metadata))
        if not scope:
            raise permission_denied("this method declares no scope, so nobody may call it")
        if scope not in principal.scopes:
            raise permission_denied(f"the token lacks the scope {scope!r}")
        return principal


def verifier_for(settings: Settings) -> TokenVerifier:
    """The verifier the settings ask for. Only COMMS_ENV=development with no JWKS configured
    trusts the generated development key; production never falls back to it."""
    if settings.auth_jwks_path is not None:
        if not (settings.auth_issuer and settings.auth_audience):
            raise ConfigError(
                "COMMS_AUTH_ISSUER and COMMS_AUTH_AUDIENCE must be set with COMMS_AUTH_JWKS_PATH"
            )
        jwks, issuer, audience = (
            settings.auth_jwks_path,
            settings.auth_issuer,
            settings.auth_audience,
        )
    elif settings.environment == "development":
        jwks, issuer, audience = (
            devkeys.ensure_keys(settings.data_dir),
            devkeys.ISSUER,
            devkeys.AUDIENCE,
        )
    else:
        raise ConfigError(
            "COMMS_AUTH_JWKS_PATH, COMMS_AUTH_ISSUER and COMMS_AUTH_AUDIENCE are required; "
            "for local development set COMMS_ENV=development to use a generated key pair"
        )
    try:
        return TokenVerifier(jwks, issuer, audience, settings.auth_leeway_seconds)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot use the JWKS file {jwks}: {error}") from None
