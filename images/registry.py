"""A client for the OCI distribution API: resolve a reference to a manifest, fetch blobs into
the content store, push an image back.

    resolve   GET /v2/<name>/manifests/<tag|digest>   Accept: OCI + Docker schema 2 types
              an index is narrowed to one platform (linux/amd64 unless told), whose manifest
              is fetched by digest; every manifest's sha256 is checked against the digest asked
              for, or against Docker-Content-Digest for a tag
    blobs     GET /v2/<name>/blobs/<digest>, redirects followed (Authorization is not sent on
              to another host), written through the store's verifying writer; a broken
              download resumes with `Range: bytes=<done>-`; 3-4 at a time
    auth      a 401's WWW-Authenticate: `Bearer realm=,service=,scope=` fetches a token from
              the realm (with Basic credentials when configured), `Basic` sends credentials;
              a registry token is sent as the bearer token as it is, an identity token (an
              OAuth2 refresh token) is traded by a POST to the realm, grant_type=refresh_token,
              whose redirects are not followed; secrets go to a plain-HTTP realm only when it
              is the insecure registry's own host
    retries   connection errors, 429 and 5xx, with exponential backoff
    mirrors   images.hosts: each mirror in order, then the upstream (containerd's hosts.toml)

Stdlib `http.client` is enough: one keep-alive connection per host and thread, redirects and
auth handled here because registries need both done their own way (no Authorization to a
blob's CDN, a token per repository scope), which generic clients would have to be talked out of.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Protocol

from skiff.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated, Unavailable
from skiff.images import hosts
from skiff.images.hosts import Endpoint, RegistryConfig
from skiff.images.reference import Reference, parse
from skiff.oci import image as oci

MANIFEST_ACCEPT = ", ".join((oci.MEDIA_TYPE_OCI_MANIFEST, oci.MEDIA_TYPE_OCI_INDEX,
                             oci.MEDIA_TYPE_DOCKER_MANIFEST_V2, oci.MEDIA_TYPE_DOCKER_MANIFEST_LIST))
MAX_MANIFEST_SIZE = 4 << 20  # containerd's limit: a manifest is read whole into memory
DEFAULT_PLATFORM = "linux/amd64"
_CHUNK = 1 << 20
_REDIRECTS = 10
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armel": "arm", "i386": "386"}


# -- errors -------------------------------------------------------------------------------

class RegistryUnavailableError(Unavailable):
    """The registry could not be reached, or kept failing, after the retries; or it answered
    what no registry should (a challenge without a realm, a token answer without a token, a
    redirected identity token request): the next mirror may do better."""


class ManifestNotFoundError(NotFound):
    pass


class BlobNotFoundError(NotFound):
    pass


class PlatformNotFoundError(NotFound):
    pass


class RegistryAuthError(Unauthenticated):
    """The registry (or its token realm) refused the credentials, or wants some and none that
    fit are configured."""


class InsecureRealmError(FailedPrecondition):
    """A secret would go in cleartext: the token realm is plain HTTP and not the insecure
    registry's own host."""


class UnsupportedMediaTypeError(InvalidArgument):
    pass


class ContentError(InvalidArgument):
    """What the registry sent does not match its digest or size."""


class _StaleIngest(InvalidArgument):
    """A resumed download did not verify: the kept partial was bad, not necessarily the
    registry."""


# -- what pull writes to -------------------------------------------------------------------

class BlobWriter(Protocol):
    @property
    def offset(self) -> int: ...
    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> str: ...


class ContentStore(Protocol):
    """The part of images.store.ContentStore that pull and push use."""

    def has(self, digest: str) -> bool: ...
    def open(self, digest: str) -> BinaryIO: ...
    def put(self, data: bytes, expected_digest: str | None = None) -> str: ...
    def writer(self, *, expected_digest: str | None = None, expected_size: int | None = None,
               resume_key: str | None = None) -> AbstractContextManager[BlobWriter]: ...
    def put_image(self, name: str, manifest_digest: str, media_type: str) -> object: ...
    def hold(self) -> AbstractContextManager[None]: ...


class Progress(Protocol):
    def start(self, digest: str, total: int, offset: int) -> None: ...
    def advance(self, digest: str, n: int) -> None: ...
    def finish(self, digest: str, *, cached: bool = False) -> None: ...


class StderrProgress:
    """One redrawn line on a terminal; a line per finished blob otherwise (logs, CI)."""

    def __init__(self, stream: object = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._total: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._finished = 0
        self._last = 0.0

    def start(self, digest: str, total: int, offset: int) -> None:
        with self._lock:
            self._total[digest] = total
            self._done[digest] = offset

    def advance(self, digest: str, n: int) -> None:
        with self._lock:
            self._done[digest] = self._done.get(digest, 0) + n
            now = time.monotonic()
            if self._tty and now - self._last > 0.1:
                self._last = now
                self._redraw()

    def finish(self, digest: str, *, cached: bool = False) -> None:
        with self._lock:
            self._finished += 1
            if self._tty:
                self._redraw()
            else:
                size = self._total.get(digest, 0)
                what = "already present" if cached else f"done {_human(size)}"
                self._write(f"{digest[:19]}: {what}\n")

    def close(self) -> None:
        with self._lock:
            if self._tty:
                self._redraw()
                self._write("\n")

    def _redraw(self) -> None:
        done, total = sum(self._done.values()), sum(self._total.values())
        self._write(f"\rblobs {self._finished}/{len(self._total)}  "
                    f"{_human(done)} / {_human(total)}\x1b[K")

    def _write(self, text: str) -> None:
        write = getattr(self._stream, "write")
        write(text)
        flush = getattr(self._stream, "flush", None)
        if flush is not None:
            flush()


class _NoProgress:
    def start(self, digest: str, total: int, offset: int) -> None:
        pass

    def advance(self, digest: str, n: int) -> None:
        pass

    def finish(self, digest: str, *, cached: bool = False) -> None:
        pass


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1000
    return f"{n} B"


# -- results ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved:
    reference: Reference
    endpoint: Endpoint
    digest: str                 # the platform manifest's digest
    media_type: str
    manifest: bytes
    index_digest: str | None = None
    index_media_type: str | None = None
    index: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PullResult:
    reference: Reference
    digest: str                 # the manifest recorded for the image
    media_type: str
    index_digest: str | None
    manifest: oci.Manifest


# -- platforms --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformSpec:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> PlatformSpec:
    """`os/arch[/variant]`, architecture aliases (x86_64, aarch64) normalized."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"platform {text!r}: expected os/arch[/variant]")
    arch = _ARCH_ALIASES.get(parts[1].lower(), parts[1].lower())
    variant = parts[2] if len(parts) == 3 else None
    if arch == "arm64" and variant == "v8":
        variant = None  # the only arm64 variant: v8 and none are the same platform
    return PlatformSpec(os=parts[0].lower(), architecture=arch, variant=variant)


def _matches(want: PlatformSpec, have: oci.Platform) -> bool:
    variant = have.variant
    if have.architecture == "arm64" and variant == "v8":
        variant = None
    return (have.os == want.os and have.architecture == want.architecture
            and (want.variant is None or want.variant == variant))


def select_platform(index: oci.Index, want: PlatformSpec, *, source: str) -> oci.Descriptor:
    candidates = [d for d in index.manifests
                  if d.platform is not None and _matches(want, d.platform)
                  and d.media_type in oci.MANIFEST_MEDIA_TYPES]
    if not candidates:
        have = sorted({str(PlatformSpec(os=d.platform.os, architecture=d.platform.architecture,
                                        variant=d.platform.variant))
                       for d in index.manifests if d.platform is not None})
        raise PlatformNotFoundError(
            f"{source}: no manifest for platform {want} in the index (has: {', '.join(have) or 'none'})")
    # with no variant asked for, prefer the plain one, then the highest (arm/v7 over arm/v6)
    candidates.sort(key=lambda d: d.platform.variant or "~" if d.platform else "", reverse=True)
    return candidates[0]


# -- HTTP ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Challenge:
    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> _Challenge:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return _Challenge(scheme.lower(), params)


Dialer = Callable[[tuple[str, int], "float | None", "tuple[str, int] | None"], socket.socket]
_dial: Dialer | None = None


def dial_with(dialer: Dialer | None) -> None:
    """Registry connections (and their name lookups) are made by `dialer` from now on, in this
    process (socket.create_connection's signature); None: socket.create_connection. A CRI
    service that runs a node's network in a namespace of its own (`skiff cri serve --netns`)
    dials from the namespace it started in, where a registry on the host's loopback is."""
    global _dial
    _dial = dialer


class Client:
    """Talks to the endpoints of `config`. Thread-safe; close() (or `with`) closes every
    connection it opened."""

    def __init__(self, config: RegistryConfig | None = None, *, retries: int = 4,
                 backoff: float = 0.25, timeout: float = 30.0, actions: str = "pull") -> None:
        self.config = config if config is not None else hosts.load()
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.actions = actions
        self._lock = threading.Lock()
        self._conns: dict[tuple[int, str, str], http.client.HTTPConnection] = {}
        self._auth: dict[tuple[str, str], str] = {}    # (netloc, repository) -> Authorization
        self._contexts: dict[tuple[str | None, bool], ssl.SSLContext] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            c.close()

    def close_idle(self) -> None:
        """Close the connections of threads that have ended (a pull's pool), so a long-lived
        client does not collect them."""
        alive = {t.ident for t in threading.enumerate()}
        with self._lock:
            dead = [k for k in self._conns if k[0] not in alive]
            conns = [self._conns.pop(k) for k in dead]
        for c in conns:
            c.close()

    # -- connections --

    def _context(self, ep: Endpoint | None) -> ssl.SSLContext:
        key = (ep.ca_file, ep.skip_verify) if ep is not None else (None, False)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = ssl.create_default_context()
                if key[0] is not None:
                    try:
                        ctx.load_verify_locations(cafile=key[0])
                    except (OSError, ssl.SSLError) as e:
                        raise InvalidArgument(f"registry {ep.registry if ep else ''}: ca_file "
                                              f"{key[0]}: {e}") from None
                if key[1]:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                self._contexts[key] = ctx
            return ctx

    def _conn(self, scheme: str, netloc: str,
              ep: Endpoint | None) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to `netloc`, and whether it was used before."""
        key = (threading.get_ident(), scheme, netloc)
        with self._lock:
            conn = self._conns.get(key)
        if conn is not None:
            return conn, True
        if scheme == "https":
            conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self._context(ep))
        elif scheme == "http":
            conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
        else:
            raise InvalidArgument(f"url scheme {scheme!r}: only http and https")
        if _dial is not None:
            conn._create_connection = _dial  # type: ignore[attr-defined]  # http.client's own hook
        with self._lock:
            self._conns[key] = conn
        return conn, False

    def _drop(self, scheme: str, netloc: str) -> None:
        with self._lock:
            conn = self._conns.pop((threading.get_ident(), scheme, netloc), None)
        if conn is not None:
            conn.close()

    def _once(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
              ep: Endpoint, *, follow: bool = True) -> http.client.HTTPResponse:
        """One request, redirects followed as Go's http.Client follows them (with `follow`
        false a redirect is returned, unread). Authorization goes only to the endpoint's host."""
        for _ in range(_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            # same host AND scheme: a redirect from https to http must not carry the credentials
            same = parts.netloc == ep.netloc and parts.scheme == ep.scheme
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            sent = headers if same else {k: v for k, v in headers.items() if k != "Authorization"}
            while True:
                conn, reused = self._conn(parts.scheme, parts.netloc, ep if same else None)
                try:
                    conn.request(method, target, body=body, headers=sent)
                    resp = conn.getresponse()
                    break
                except (OSError, http.client.HTTPException):
                    self._drop(parts.scheme, parts.netloc)
                    if not reused:
                        raise
                    # the server closed an idle keep-alive connection: a fresh one, no backoff
            if not follow or resp.status not in _REDIRECT_STATUSES or not resp.getheader("Location"):
                return resp
            resp.read()
            url = urllib.parse.urljoin(url, resp.getheader("Location", ""))
            # Go's redirectBehavior: 307 and 308 repeat the request, body and all; 301, 302 and
            # 303 make any method but HEAD a GET, without the body or the headers that describe it
            if resp.status in (301, 302, 303):
                method = "HEAD" if method == "HEAD" else "GET"
                body = None
                headers = {k: v for k, v in headers.items()
                           if k.lower() not in ("content-length", "content-type")}
        raise RegistryUnavailableError(f"{method} {url}: more than {_REDIRECTS} redirects")

    def request(self, ep: Endpoint, method: str, path: str, *, repository: str,
                headers: dict[str, str] | None = None,
                body: bytes | None = None) -> http.client.HTTPResponse:
        """`method ep.base+path` with auth, retries and backoff. Returns the response of the
        first attempt that is not a 5xx/429 (callers check 4xx), unread."""
        url = path if "://" in path else ep.base + path
        tried_auth = False
        last: str = ""
        attempt = 0
        while attempt <= self.retries:
            sent = dict(headers or {})
            auth = self._auth.get((ep.netloc, repository))
            if auth is not None:
                sent["Authorization"] = auth
            try:
                resp = self._once(method, url, sent, body, ep)
            except (OSError, http.client.HTTPException) as e:
                last = _describe(e)
            else:
                if resp.status == 401 and not tried_auth:
                    challenge = resp.getheader("WWW-Authenticate", "")
                    resp.read()
                    self._authenticate(ep, challenge, repository)
                    tried_auth = True
                    continue
                if resp.status == 401:
                    resp.read()
                    # a registry token is the one secret that reaches here unchecked by a realm:
                    # named when it was the bearer sent, not when Basic or a realm's token was
                    token = ep.credentials.registry_token if ep.credentials is not None else ""
                    given = (": the registry token was refused"
                             if token and auth == f"Bearer {token}" else "")
                    raise RegistryAuthError(f"{ep.base}: {method} {path}: unauthorized "
                                            f"(repository {repository}){given}")
                if resp.status == 429 or resp.status >= 500:
                    last = f"HTTP {resp.status} {_error_text(resp)}"
                else:
                    return resp
            attempt += 1
            if attempt <= self.retries:
                time.sleep(self.backoff * (2 ** (attempt - 1)))
        raise RegistryUnavailableError(f"{method} {url}: {last} (after {self.retries + 1} attempts)")

    def _authenticate(self, ep: Endpoint, header: str, repository: str) -> None:
        challenge = parse_challenge(header)
        creds = ep.credentials
        basic = None
        if creds is not None and (creds.username or creds.password):
            raw = f"{creds.username}:{creds.password}".encode()
            basic = "Basic " + base64.b64encode(raw).decode()
        if challenge.scheme == "basic":
            tokens = []
            if creds is not None and creds.registry_token:
                tokens.append("a registry token")
            if creds is not None and creds.identity_token:
                tokens.append("an identity token")
            if basic is None and tokens:
                raise RegistryAuthError(f"{ep.base}: basic auth required: {' and '.join(tokens)} "
                                        f"configured for {ep.registry}, which cannot answer a "
                                        "Basic challenge (it needs a username and password)")
            if basic is None:
                raise RegistryAuthError(f"{ep.base}: basic auth required and no credentials "
                                        f"configured for {ep.registry}")
            self._set_auth(ep, repository, basic)
        elif challenge.scheme == "bearer":
            if creds is not None and creds.registry_token:
                # docker's existingTokenHandler: the caller got the token from the realm
                # already; asking the realm again would not use it
                token = creds.registry_token
            else:
                token = self._token(ep, challenge, repository, basic,
                                    creds.identity_token if creds is not None else "")
            self._set_auth(ep, repository, "Bearer " + token)
        elif not header.strip():
            # not a refusal of anything: the registry broke the protocol (RFC 7235 3.1)
            raise RegistryUnavailableError(f"{ep.base}: 401 without a WWW-Authenticate challenge")
        else:
            raise RegistryUnavailableError(f"{ep.base}: unsupported auth challenge {header!r}")

    def _set_auth(self, ep: Endpoint, repository: str, value: str) -> None:
        with self._lock:
            self._auth[(ep.netloc, repository)] = value

    def _token(self, ep: Endpoint, challenge: _Challenge, repository: str,
               basic: str | None, refresh_token: str) -> str:
        """A bearer token from the challenge's realm: GET with `basic` (or anonymous), or, with
        a `refresh_token`, docker's OAuth2 POST (grant_type=refresh_token), which is the only
        way a realm takes one; it does not fall back to GET, as docker does not."""
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryUnavailableError(f"{ep.base}: bearer challenge without a realm")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryUnavailableError(f"{ep.base}: bearer challenge with realm {realm!r}, "
                                           "not an http(s) URL")
        query = {"scope": challenge.params.get("scope") or f"repository:{repository}:{self.actions}"}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        own = parts.netloc == ep.netloc
        # another host: the configured CA still counts, skip_verify not
        token_ep = Endpoint(registry=ep.registry, scheme=parts.scheme, netloc=parts.netloc,
                            skip_verify=ep.skip_verify and own, ca_file=ep.ca_file)
        # Secrets go to a plain-HTTP realm only when it is the insecure registry itself:
        # `insecure = true` was said of that host, not of any host its challenge names.
        safe = parts.scheme == "https" or (ep.scheme == "http" and own)
        headers: dict[str, str] = {}
        withheld = ""
        if basic and safe:
            headers["Authorization"] = basic
        elif basic:
            withheld = (f"; the credentials for {ep.registry} were not sent, the realm is plain "
                        f"HTTP and not {ep.base} itself")
        method, payload, what = "GET", None, "token"
        if refresh_token:
            if not safe:
                raise InsecureRealmError(f"{realm}: an identity token is not sent to a plain-HTTP "
                                         f"realm that is not {ep.base} itself")
            form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                    "service": query.get("service", ""), "scope": query["scope"],
                    "client_id": "skiff"}
            url, method, payload, what = realm, "POST", urllib.parse.urlencode(form).encode(), "identity token"
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        reason = ""
        for attempt in range(self.retries + 1):
            try:
                # the refresh token is in the body, which a 307 or 308 would carry on to wherever
                # the realm points (plain HTTP, another host): a POST's redirect is not followed
                resp = self._once(method, url, headers, payload, token_ep, follow=not refresh_token)
                data = resp.read(1 << 20)
            except (OSError, http.client.HTTPException) as e:
                reason = _describe(e)
            else:
                error, detail = _oauth_error(data)
                # 400 invalid_grant: how an OAuth2 server refuses a grant (RFC 6749 5.2); other
                # 400s (unsupported_grant_type, invalid_request) are the realm not doing OAuth2
                if resp.status in (401, 403) or (refresh_token and resp.status == 400
                                                 and error == "invalid_grant"):
                    raise RegistryAuthError(f"{realm}: {what} refused for {query['scope']} "
                                            f"(HTTP {resp.status}{': ' + detail if detail else ''})"
                                            f"{withheld}")
                if refresh_token and resp.status in _REDIRECT_STATUSES:
                    raise RegistryUnavailableError(
                        f"{realm}: identity token request redirected (HTTP {resp.status} to "
                        f"{resp.getheader('Location', '')!r}): not followed, the refresh token "
                        "goes only to the realm the registry named")
                if resp.status == 200:
                    try:
                        body = json.loads(data)
                        token = body.get("token") or body.get("access_token")
                    except (ValueError, AttributeError):
                        token = None
                    if not isinstance(token, str) or not token:
                        raise RegistryUnavailableError(f"{realm}: token response without a token")
                    return token
                reason = f"HTTP {resp.status}{': ' + detail if detail else ''}"
                if resp.status < 500 and resp.status != 429:
                    raise RegistryUnavailableError(f"{realm}: {what} request failed: {reason}")
            if attempt < self.retries:
                time.sleep(self.backoff * (2 ** attempt))
        raise RegistryUnavailableError(f"{realm}: {what} request failed: {reason} "
                                       f"(after {self.retries + 1} attempts)")

    # -- manifests --

    def resolve(self, ref: Reference, *, platform: str | None = None) -> Resolved:
        """The manifest for `ref` (an index narrowed to `platform`), from the first endpoint
        (mirrors, then upstream) that has it."""
        want = parse_platform(platform or DEFAULT_PLATFORM)
        endpoints = self.config.endpoints(ref.domain)
        failures: list[str] = []
        for i, ep in enumerate(endpoints):
            try:
                return self._resolve_at(ep, ref, want)
            except (NotFound, Unavailable, RegistryAuthError, InsecureRealmError) as e:
                if i == len(endpoints) - 1:
                    if failures:
                        raise type(e)(f"{e} (mirrors: {'; '.join(failures)})") from e
                    raise
                failures.append(f"{ep.base}: {e}")
        raise AssertionError("unreachable: endpoints() always ends with the upstream")

    def _resolve_at(self, ep: Endpoint, ref: Reference, want: PlatformSpec) -> Resolved:
        body, media_type, digest = self.fetch_manifest(ep, ref, ref.object)
        if media_type in oci.MANIFEST_MEDIA_TYPES:
            return Resolved(reference=ref, endpoint=ep, digest=digest, media_type=media_type,
                            manifest=body)
        index = oci.parse_index(body, source=f"{ref.name}@{digest}")
        chosen = select_platform(index, want, source=str(ref))
        child, child_type, child_digest = self.fetch_manifest(ep, ref, chosen.digest)
        if child_type not in oci.MANIFEST_MEDIA_TYPES:
            raise UnsupportedMediaTypeError(
                f"{ref.name}@{chosen.digest}: index entry for {want} is a {child_type}, not an "
                "image manifest")
        if len(child) != chosen.size:
            raise ContentError(f"{ref.name}@{chosen.digest}: size {len(child)}, the index says "
                               f"{chosen.size}")
        return Resolved(reference=ref, endpoint=ep, digest=child_digest, media_type=child_type,
                        manifest=child, index_digest=digest, index_media_type=media_type,
                        index=body)

    def fetch_manifest(self, ep: Endpoint, ref: Reference, obj: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of /manifests/<obj>, digest verified."""
        shown = f"{ref.name}@{obj}" if ":" in obj else f"{ref.name}:{obj}"
        resp = self.request(ep, "GET", f"/v2/{ref.path}/manifests/{obj}", repository=ref.path,
                            headers={"Accept": MANIFEST_ACCEPT})
        if resp.status == 404:
            detail = _error_text(resp)
            raise ManifestNotFoundError(f"{shown}: not found at {ep.base} ({detail})")
        if resp.status != 200:
            raise RegistryUnavailableError(f"{shown}: {ep.base}: HTTP {resp.status} "
                                           f"{_error_text(resp)}")
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
            resp.close()
            self._drop(ep.scheme, ep.netloc)
            raise ContentError(f"{shown}: manifest of {length} bytes, over {MAX_MANIFEST_SIZE}")
        try:
            body = resp.read(MAX_MANIFEST_SIZE + 1)
        except (OSError, http.client.HTTPException) as e:
            self._drop(ep.scheme, ep.netloc)
            raise RegistryUnavailableError(f"{shown}: reading manifest: {_describe(e)}") from None
        if len(body) > MAX_MANIFEST_SIZE:
            self._drop(ep.scheme, ep.netloc)
            raise ContentError(f"{shown}: manifest over {MAX_MANIFEST_SIZE} bytes")
        digest = _digest_of(body, obj if ":" in obj else "sha256:")
        if ":" in obj and digest != obj:
            raise ContentError(f"{shown}: manifest digest mismatch: got {digest}, want {obj}")
        header = resp.getheader("Docker-Content-Digest")
        if ":" not in obj and header and header.startswith("sha256:") and header != digest:
            raise ContentError(f"{shown}: manifest digest mismatch: got {digest}, registry says "
                               f"{header}")
        return body, _media_type(body, resp.getheader("Content-Type"), shown), digest

    # -- blobs --

    def fetch_blob(self, endpoints: Sequence[Endpoint], repository: str, desc: oci.Descriptor,
                   store: ContentStore, progress: Progress) -> None:
        """`desc` into the store, from the first endpoint that has it."""
        if store.has(desc.digest):
            progress.start(desc.digest, desc.size, desc.size)
            progress.finish(desc.digest, cached=True)
            return
        for i, ep in enumerate(endpoints):
            try:
                try:
                    self._download(ep, repository, desc, store, progress)
                except _StaleIngest:
                    # the store deleted the bad partial at commit: once more from zero
                    self._download(ep, repository, desc, store, progress)
                progress.finish(desc.digest)
                return
            except (NotFound, Unavailable):
                if i == len(endpoints) - 1:
                    raise

    def _download(self, ep: Endpoint, repository: str, desc: oci.Descriptor,
                  store: ContentStore, progress: Progress) -> None:
        path = f"/v2/{repository}/blobs/{desc.digest}"
        shown = f"{ep.base}{path}"
        with store.writer(expected_digest=desc.digest, expected_size=desc.size,
                          resume_key=desc.digest) as w:
            done = resumed = w.offset
            progress.start(desc.digest, desc.size, done)
            failures = 0
            while True:
                headers = {"Range": f"bytes={done}-"} if done else {}
                resp = self.request(ep, "GET", path, repository=repository, headers=headers)
                if resp.status == 416 and done == desc.size:
                    resp.read()
                    break
                if resp.status == 404:
                    raise BlobNotFoundError(f"{shown}: not found ({_error_text(resp)})")
                if resp.status not in (200, 206):
                    raise RegistryUnavailableError(f"{shown}: HTTP {resp.status} {_error_text(resp)}")
                skip = done if resp.status == 200 else done - _range_start(resp, shown)
                if skip < 0:
                    raise ContentError(f"{shown}: asked for bytes from {done}, got "
                                       f"{resp.getheader('Content-Range')}")
                try:
                    for chunk in _chunks(resp):
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        if done + len(chunk) > desc.size:
                            resp.close()
                            self._drop(ep.scheme, ep.netloc)
                            raise ContentError(f"{shown}: more than the {desc.size} bytes the "
                                               "manifest says")
                        w.write(chunk)
                        done += len(chunk)
                        progress.advance(desc.digest, len(chunk))
                        if done == desc.size:
                            break
                    if done >= desc.size:
                        if resp.read(1):
                            self._drop(ep.scheme, ep.netloc)
                            raise ContentError(f"{shown}: more than the {desc.size} bytes the "
                                               "manifest says")
                        break  # the read marked the response done: the connection is reusable
                    reason = f"body ended at {done} of {desc.size} bytes"
                except (OSError, http.client.HTTPException) as e:
                    reason = _describe(e)
                self._drop(ep.scheme, ep.netloc)
                failures += 1
                if failures > self.retries:
                    raise RegistryUnavailableError(
                        f"{shown}: download failed after {failures} attempts: {reason}")
                time.sleep(self.backoff * (2 ** (failures - 1)))
            try:
                w.commit()
            except InvalidArgument as e:
                if resumed:
                    raise _StaleIngest(str(e)) from e
                raise

    def push_blob(self, ep: Endpoint, repository: str, digest: str, data: BinaryIO,
                  size: int) -> None:
        """A monolithic upload (POST then PUT ?digest=), skipped if the blob is there."""
        path = f"/v2/{repository}/blobs/{digest}"
        head = self.request(ep, "HEAD", path, repository=repository)
        head.read()
        if head.status == 200:
            return
        start = self.request(ep, "POST", f"/v2/{repository}/blobs/uploads/",
                             repository=repository, headers={"Content-Length": "0"})
        start.read()
        location = start.getheader("Location")
        if start.status != 202 or not location:
            raise RegistryUnavailableError(f"{ep.base}: starting upload of {digest}: HTTP "
                                           f"{start.status}")
        url = urllib.parse.urljoin(ep.base + f"/v2/{repository}/blobs/uploads/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        body = data.read()
        if len(body) != size:
            raise ContentError(f"{digest}: store holds {len(body)} bytes, descriptor says {size}")
        put = self.request(ep, "PUT", url, repository=repository, body=body,
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(size)})
        if put.status != 201:
            raise RegistryUnavailableError(f"{ep.base}: uploading {digest}: HTTP {put.status} "
                                           f"{_error_text(put)}")
        put.read()

    def push_manifest(self, ep: Endpoint, ref: Reference, obj: str, body: bytes,
                      media_type: str) -> None:
        resp = self.request(ep, "PUT", f"/v2/{ref.path}/manifests/{obj}", repository=ref.path,
                            body=body, headers={"Content-Type": media_type,
                                                "Content-Length": str(len(body))})
        if resp.status != 201:
            raise RegistryUnavailableError(f"{ep.base}: pushing manifest {ref.name}:{obj}: HTTP "
                                           f"{resp.status} {_error_text(resp)}")
        resp.read()


# -- pull and push ----------------------------------------------------------------------------

def pull(ref: str | Reference, store: ContentStore, *, platform: str | None = None,
         progress: Progress | None = None, config: RegistryConfig | None = None,
         workers: int = 4, client: Client | None = None) -> PullResult:
    """Resolve `ref`, fetch config and layers (`workers` at a time) into `store`, then the
    manifest (and index), then record the image under `str(ref)`. Blobs go first so the store
    never holds a manifest whose blobs are missing."""
    reference = parse(ref) if isinstance(ref, str) else ref
    progress = progress if progress is not None else _NoProgress()
    own = client is None
    c = client if client is not None else Client(config)
    try:
        resolved = c.resolve(reference, platform=platform)
        source = f"{reference.name}@{resolved.digest}"
        manifest = oci.parse_manifest(resolved.manifest, source=source)
        _check_media_types(manifest, source)
        endpoints = [resolved.endpoint] + [e for e in c.config.endpoints(reference.domain)
                                           if e != resolved.endpoint]
        with store.hold():  # gc must not take the blobs before the image reaches them
            blobs = list({d.digest: d for d in (manifest.config, *manifest.layers)}.values())
            with ThreadPoolExecutor(max_workers=max(1, workers),
                                    thread_name_prefix="skiff-pull") as pool:
                futures: list[Future[None]] = [
                    pool.submit(c.fetch_blob, endpoints, reference.path, d, store, progress)
                    for d in blobs]
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    if f.done() and f.exception() is not None:
                        for other in futures:
                            other.cancel()
                        wait(futures)
                        f.result()
            if resolved.index is not None and resolved.index_digest is not None:
                store.put(resolved.index, resolved.index_digest)
            store.put(resolved.manifest, resolved.digest)
            store.put_image(str(reference), resolved.digest, resolved.media_type)
    finally:
        if own:
            c.close()
        else:
            c.close_idle()
        close = getattr(progress, "close", None)
        if close is not None:
            close()
    return PullResult(reference=reference, digest=resolved.digest,
                      media_type=resolved.media_type, index_digest=resolved.index_digest,
                      manifest=manifest)


def push(ref: str | Reference, store: ContentStore, manifest_digest: str, *,
         config: RegistryConfig | None = None, client: Client | None = None) -> None:
    """Push the image manifest `manifest_digest` (blobs first) to `ref`'s upstream registry,
    tagged with `ref`'s tag (or by digest)."""
    reference = parse(ref) if isinstance(ref, str) else ref
    own = client is None
    c = client if client is not None else Client(config, actions="pull,push")
    try:
        ep = c.config.endpoints(reference.domain, pull=False)[0]
        with store.open(manifest_digest) as f:
            body = f.read()
        source = f"{reference.name}@{manifest_digest}"
        # mediaType is optional in an OCI manifest: without it, it is one
        media_type = _media_type(body, oci.MEDIA_TYPE_OCI_MANIFEST, source)
        if media_type not in oci.MANIFEST_MEDIA_TYPES:
            raise UnsupportedMediaTypeError(f"{source}: push takes an image manifest, not {media_type}")
        manifest = oci.parse_manifest(body, source=source)
        for d in (manifest.config, *manifest.layers):
            with store.open(d.digest) as blob:
                c.push_blob(ep, reference.path, d.digest, blob, d.size)
        c.push_manifest(ep, reference, reference.tag or manifest_digest, body, media_type)
    finally:
        if own:
            c.close()


# -- helpers ----------------------------------------------------------------------------------

def _check_media_types(manifest: oci.Manifest, source: str) -> None:
    if manifest.config.media_type not in oci.CONFIG_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"{source}: config {manifest.config.digest}: unsupported media type "
            f"{manifest.config.media_type!r}")
    for i, layer in enumerate(manifest.layers):
        if layer.media_type not in oci.LAYER_MEDIA_TYPES:
            raise UnsupportedMediaTypeError(
                f"{source}: layers[{i}] {layer.digest}: unsupported media type {layer.media_type!r}")


def _media_type(body: bytes, content_type: str | None, shown: str) -> str:
    """The body's own mediaType wins over Content-Type (some registries send
    application/json); neither known is an error, never a guess."""
    declared = None
    try:
        data = json.loads(body)
    except ValueError:
        raise ContentError(f"{shown}: manifest is not JSON") from None
    if isinstance(data, dict) and isinstance(data.get("mediaType"), str):
        declared = data["mediaType"]
    header = (content_type or "").split(";")[0].strip()
    media_type = declared or header
    if media_type in oci.MANIFEST_MEDIA_TYPES or media_type in oci.INDEX_MEDIA_TYPES:
        return media_type
    raise UnsupportedMediaTypeError(
        f"{shown}: unsupported manifest media type {media_type or '(none)'!r}; "
        "expected an OCI or Docker schema 2 manifest or index")


def _digest_of(body: bytes, like: str) -> str:
    algorithm = like.partition(":")[0] or "sha256"
    if algorithm not in ("sha256", "sha512"):
        raise ContentError(f"digest {like!r}: unsupported algorithm")
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def _range_start(resp: http.client.HTTPResponse, shown: str) -> int:
    m = re.match(r"bytes (\d+)-", resp.getheader("Content-Range", ""))
    if m is None:
        raise ContentError(f"{shown}: 206 without a usable Content-Range")
    return int(m.group(1))


def _chunks(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    # read1: whatever has arrived, up to _CHUNK, so a stalled or killed download has written
    # what it got (and progress moves) instead of waiting for a full buffer
    while chunk := resp.read1(_CHUNK):
        yield chunk


def _error_text(resp: http.client.HTTPResponse) -> str:
    """The first error of a distribution-spec error body, else a bit of the body."""
    try:
        raw = resp.read(64 << 10)
    except (OSError, http.client.HTTPException):
        return ""
    try:
        errors = json.loads(raw)["errors"]
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                         for e in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw[:200].decode(errors="replace").strip()


def _oauth_error(body: bytes) -> tuple[str, str]:
    """An OAuth2 error answer's `error`, and it with its description to show; else nothing:
    bodies of other refusals are not shown, they may be long pages."""
    try:
        data = json.loads(body)
        error, description = data.get("error"), data.get("error_description")
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, str):
        return "", ""
    shown = f"{error} ({description})" if isinstance(description, str) and description else error
    return error, shown


def _describe(e: BaseException) -> str:
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed after {len(e.partial)} bytes"
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if not isinstance(e, OSError) else text


def default_progress() -> Progress:
    return StderrProgress() if os.environ.get("SKIFF_NO_PROGRESS") is None else _NoProgress()
