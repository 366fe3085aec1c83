"""Registry configuration: one TOML file shared by the CLI and the CRI service, in the spirit of
containerd's `hosts.toml` and CRI-O's `registries.conf`.

The file is the `path` argument, else `$SKIFF_REGISTRIES`, else /etc/skiff/registries.toml
(a missing default file means "no configuration"; a missing explicit one is an error).

    # default docker-style credentials file for every registry without its own credentials
    auth_file = "/root/.docker/config.json"

    [registries."docker.io"]
    # tried in order before the upstream; the repository path is unchanged
    # (docker.io/library/busybox is fetched as http://127.0.0.1:5000/v2/library/busybox/...)
    mirrors = ["http://127.0.0.1:5000", "mirror.example.com"]

    [registries."registry.k8s.io"]
    mirrors = ["mirror.example.com"]
    # server = "https://registry.k8s.io"   # where the upstream really is (containerd's
    #                                       # `server`); "http://127.0.0.1:9" makes it unreachable

    [registries."127.0.0.1:5000"]
    insecure = true            # plain HTTP

    [registries."mirror.example.com"]
    ca_file = "/etc/skiff/certs/mirror-ca.pem"   # added to the system CAs
    skip_verify = false        # true: HTTPS without checking the certificate
    username = "puller"
    password = "secret"
    # or: auth_file = "/etc/skiff/mirror-auth.json"   (docker config.json "auths")

A mirror is `host[:port]`, optionally with a scheme: `http://` makes it plain HTTP whatever its
own table says; its TLS settings and credentials come from its own `[registries."host"]` table.
Table keys are references' registry names: `docker.io` (whose upstream is
registry-1.docker.io), `registry.k8s.io`, `127.0.0.1:5000`. Mirrors are used for pulls only.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from skiff.errors import InvalidArgument, NotFound

DEFAULT_PATH = "/etc/skiff/registries.toml"
ENV_PATH = "SKIFF_REGISTRIES"

# Where a registry name is not the host to connect to.
_UPSTREAM = {"docker.io": "registry-1.docker.io"}
# docker login writes Docker Hub credentials under its v1 index URL.
_AUTH_KEYS = {"docker.io": ("docker.io", "https://index.docker.io/v1/", "index.docker.io",
                            "registry-1.docker.io")}

_HOST_KEYS = frozenset({"server", "mirrors", "insecure", "skip_verify", "ca_file", "username", "password",
                        "auth_file"})


class RegistryConfigError(InvalidArgument):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What docker's AuthConfig (and the CRI's) can carry: a username and password, shown as
    Basic to the registry or to its token realm; a `registry_token`, a bearer token got
    elsewhere and sent as it is; an `identity_token`, an OAuth2 refresh token traded at the
    token realm for an access token. The config file only gives username and password."""
    username: str = ""
    password: str = ""
    registry_token: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # keep passwords and tokens out of logs and tracebacks
        return (f"Credentials(username={self.username!r}, password=***, "
                f"registry_token={'***' if self.registry_token else ''!r}, "
                f"identity_token={'***' if self.identity_token else ''!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    server: str | None = None   # "[scheme://]host[:port]" of the upstream, if not the name
    insecure: bool = False
    skip_verify: bool = False
    ca_file: str | None = None
    credentials: Credentials | None = None
    auth_file: str | None = None
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One place to try: `scheme://netloc/v2/...`."""
    registry: str          # the configuration key it came from ("docker.io", "127.0.0.1:5000")
    scheme: str            # "https" or "http"
    netloc: str            # host[:port] to connect to
    skip_verify: bool = False
    ca_file: str | None = None
    credentials: Credentials | None = None
    mirror: bool = False

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.netloc}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryConfig:
    hosts: dict[str, HostConfig] = field(default_factory=dict)
    auth_file: str | None = None
    source: str | None = None

    def host(self, name: str) -> HostConfig:
        return self.hosts.get(name, HostConfig())

    def endpoints(self, registry: str, *, pull: bool = True) -> list[Endpoint]:
        """The mirrors of `registry` in order (for pulls), then the upstream."""
        own = self.host(registry)
        found = []
        if pull:
            for mirror in own.mirrors:
                scheme, _, netloc = mirror.rpartition("://")
                netloc = netloc.rstrip("/")
                cfg = self.host(netloc)
                found.append(self._endpoint(netloc, cfg, scheme=scheme or None, mirror=True))
        found.append(self._endpoint(registry, own, scheme=None, mirror=False))
        return found

    def credentials(self, registry: str) -> Credentials | None:
        own = self.host(registry)
        if own.credentials is not None:
            return own.credentials
        auth_file = own.auth_file or self.auth_file
        if auth_file is None:
            return None
        return _from_auth_file(auth_file, registry)

    def _endpoint(self, registry: str, cfg: HostConfig, *, scheme: str | None,
                  mirror: bool) -> Endpoint:
        netloc = _UPSTREAM.get(registry, registry)
        if cfg.server is not None and not mirror:
            server_scheme, _, netloc = cfg.server.rpartition("://")
            netloc = netloc.rstrip("/")
            scheme = scheme or server_scheme or None
        return Endpoint(
            registry=registry,
            scheme=scheme or ("http" if cfg.insecure else "https"),
            netloc=netloc,
            skip_verify=cfg.skip_verify, ca_file=cfg.ca_file,
            credentials=self.credentials(registry), mirror=mirror)


def load(path: str | None = None) -> RegistryConfig:
    explicit = path or os.environ.get(ENV_PATH)
    chosen = explicit or DEFAULT_PATH
    try:
        with open(chosen, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise NotFound(f"registry configuration {chosen}: no such file") from None
        return RegistryConfig()
    except tomllib.TOMLDecodeError as e:
        raise RegistryConfigError(f"registry configuration {chosen}: {e}") from None
    return parse(data, source=chosen)


def parse(data: dict[str, Any], *, source: str = "<config>") -> RegistryConfig:
    unknown = set(data) - {"auth_file", "registries"}
    if unknown:
        raise RegistryConfigError(f"{source}: unknown key(s) {sorted(unknown)}")
    auth_file = _opt_str(data, "auth_file", source)
    registries = data.get("registries", {})
    if not isinstance(registries, dict):
        raise RegistryConfigError(f"{source}: registries: must be a table")
    hosts = {}
    for name, table in registries.items():
        where = f'{source}: registries."{name}"'
        if not isinstance(table, dict):
            raise RegistryConfigError(f"{where}: must be a table")
        bad = set(table) - _HOST_KEYS
        if bad:
            raise RegistryConfigError(f"{where}: unknown key(s) {sorted(bad)}")
        mirrors = table.get("mirrors", [])
        if not isinstance(mirrors, list) or not all(isinstance(m, str) and m for m in mirrors):
            raise RegistryConfigError(f"{where}.mirrors: must be a list of host[:port] strings")
        for m in mirrors:
            scheme = m.rpartition("://")[0]
            if scheme not in ("", "http", "https"):
                raise RegistryConfigError(f"{where}.mirrors: {m!r}: scheme must be http or https")
        username = _opt_str(table, "username", where)
        password = _opt_str(table, "password", where)
        if (username is None) != (password is None):
            raise RegistryConfigError(f"{where}: username and password go together")
        server = _opt_str(table, "server", where)
        if server is not None and server.rpartition("://")[0] not in ("", "http", "https"):
            raise RegistryConfigError(f"{where}.server: {server!r}: scheme must be http or https")
        hosts[name] = HostConfig(
            server=server,
            insecure=_bool(table, "insecure", where),
            skip_verify=_bool(table, "skip_verify", where),
            ca_file=_opt_str(table, "ca_file", where),
            credentials=(Credentials(username=username, password=password)
                         if username is not None and password is not None else None),
            auth_file=_opt_str(table, "auth_file", where),
            mirrors=tuple(mirrors))
    return RegistryConfig(hosts=hosts, auth_file=auth_file, source=source)


def _bool(table: dict[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise RegistryConfigError(f"{where}.{key}: must be true or false, not {value!r}")
    return value


def _opt_str(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise RegistryConfigError(f"{where}.{key}: must be a string, not {value!r}")
    return value


def _from_auth_file(path: str, registry: str) -> Credentials | None:
    """A docker-style config.json: `{"auths": {"host": {"auth": base64("user:pass")}}}`,
    `{"username": ..., "password": ...}`, or a token `docker login` saved (`identitytoken`,
    `registrytoken`). Credential helpers (`credsStore`) are not run."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"auth file {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise RegistryConfigError(f"auth file {path}: {e}") from None
    auths = data.get("auths", {}) if isinstance(data, dict) else {}
    if not isinstance(auths, dict):
        raise RegistryConfigError(f"auth file {path}: auths: must be an object")
    for key in _AUTH_KEYS.get(registry, (registry,)):
        for candidate in (key, f"https://{key}", f"http://{key}"):
            entry = auths.get(candidate)
            if isinstance(entry, dict):
                return _entry_credentials(entry, path, candidate)
    return None


def _entry_credentials(entry: dict[str, Any], path: str, key: str) -> Credentials | None:
    tokens = {field: entry.get(name) for field, name in (("identity_token", "identitytoken"),
                                                         ("registry_token", "registrytoken"))}
    if any(isinstance(t, str) and t for t in tokens.values()):
        return Credentials(**{field: t for field, t in tokens.items() if isinstance(t, str)})
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(username=entry["username"], password=entry["password"])
    auth = entry.get("auth")
    if not isinstance(auth, str) or not auth:
        return None
    try:
        user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise RegistryConfigError(f"auth file {path}: auths.{key}.auth: not base64 of user:password")
    return Credentials(username=user, password=password)
