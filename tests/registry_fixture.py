"""Registries for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with a free
port, plain or with htpasswd basic auth over TLS with a throwaway CA; a small in-process fake
registry for what a real one never does (tampered, truncated, flaky, token auth); and images
built here as OCI layout directories, pushed with Debian's skopeo.

Imported by tests/test_registry.py; its fixtures are re-exported there.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
import ssl

import pytest

import support

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

USERNAME = "skiff"
PASSWORD = "s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the real registry -------------------------------------------------------------------------

@dataclass
class Registry:
    host: str                      # "127.0.0.1:PORT"
    scheme: str
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"


def _make_certs(d: Path) -> tuple[str, str, str]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=skiff test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=digitalSignature,keyEncipherment\n"
                               "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key")


@contextmanager
def run_registry(workdir: Path, *, secure: bool = False) -> Iterator[Registry]:
    """`docker-registry serve` on 127.0.0.1:<free port>, storage in `workdir`; with `secure`,
    TLS from a fresh CA and htpasswd basic auth. Stopped and reaped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [
        "version: 0.1",
        "log: {level: error, accesslog: {disabled: true}}",
        f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}, delete: {{enabled: true}}}}",
        f"http: {{addr: '127.0.0.1:{port}'" + ("" if not secure else ", tls: {TLS}") + "}",
    ]
    reg = Registry(host=f"127.0.0.1:{port}", scheme="https" if secure else "http")
    if secure:
        ca, crt, key = _make_certs(workdir)
        lines[-1] = lines[-1].replace("{TLS}", f"{{certificate: {crt}, key: {key}}}")
        htpasswd = workdir / "htpasswd"
        out = subprocess.run(["htpasswd", "-Bbn", USERNAME, PASSWORD], check=True,
                             capture_output=True, text=True).stdout
        htpasswd.write_text(out)
        lines.append(f"auth: {{htpasswd: {{realm: skiff-test, path: {htpasswd}}}}}")
        reg.ca_file, reg.username, reg.password = ca, USERNAME, PASSWORD
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    with open(workdir / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_ready(reg, proc, workdir / "registry.log")
        yield reg
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(reg: Registry, proc: subprocess.Popen[bytes], log: Path) -> None:
    ctx = ssl.create_default_context(cafile=reg.ca_file) if reg.ca_file else None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{reg.url}/v2/", timeout=2, context=ctx):
                return
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 401:  # up, and asking for credentials
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry on {reg.host} not ready: {log.read_text()}")


# -- images built here ------------------------------------------------------------------------

def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = _digest(data)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def layer_tgz(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip tar layer with `files`, and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), _digest(tar_bytes)


@dataclass
class BuiltImage:
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes, manifest included


def add_image(layout: Path, *, files: dict[str, bytes], arch: str = "amd64",
              variant: str | None = None,
              more_layers: tuple[dict[str, bytes], ...] = ()) -> BuiltImage:
    """Blobs of an image (one layer per dict of files) into `layout`; the manifest descriptor
    is not indexed."""
    layers = [layer_tgz(f) for f in (files, *more_layers)]
    config: dict[str, object] = {
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/hello"], "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
    }
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config).encode()
    cdesc = {"mediaType": OCI_CONFIG, **_blob(layout, config_bytes)}
    ldescs = [{"mediaType": OCI_LAYER_GZIP, **_blob(layout, tgz)} for tgz, _ in layers]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc,
                           "layers": ldescs}).encode()
    mdesc = _blob(layout, manifest)
    blobs = {str(mdesc["digest"]): manifest, str(cdesc["digest"]): config_bytes}
    blobs.update({str(d["digest"]): tgz for d, (tgz, _) in zip(ldescs, layers)})
    return BuiltImage(manifest_digest=str(mdesc["digest"]), config_digest=str(cdesc["digest"]),
                      layer_digests=[str(d["digest"]) for d in ldescs], blobs=blobs)


def write_layout_index(layout: Path, entries: list[dict[str, object]]) -> None:
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                   "manifests": entries}))


def single_image_layout(layout: Path, tag: str, files: dict[str, bytes]) -> BuiltImage:
    img = add_image(layout, files=files)
    m = img.blobs[img.manifest_digest]
    write_layout_index(layout, [{"mediaType": OCI_MANIFEST, "digest": img.manifest_digest,
                                 "size": len(m),
                                 "annotations": {"org.opencontainers.image.ref.name": tag}}])
    return img


def multi_platform_layout(layout: Path, tag: str) -> tuple[str, dict[str, BuiltImage]]:
    """An index of linux/amd64 and linux/arm64 images; the index digest and the images by
    platform."""
    images = {"linux/amd64": add_image(layout, files={"hello": b"amd64\n"}, arch="amd64"),
              "linux/arm64": add_image(layout, files={"hello": b"arm64\n"}, arch="arm64",
                                       variant="v8")}
    manifests = []
    for plat, img in images.items():
        os_, arch = plat.split("/")
        platform = {"os": os_, "architecture": arch}
        if arch == "arm64":
            platform["variant"] = "v8"
        manifests.append({"mediaType": OCI_MANIFEST, "digest": img.manifest_digest,
                          "size": len(img.blobs[img.manifest_digest]), "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": manifests}).encode()
    idesc = _blob(layout, index)
    write_layout_index(layout, [{"mediaType": OCI_INDEX, **idesc,
                                 "annotations": {"org.opencontainers.image.ref.name": tag}}])
    return str(idesc["digest"]), images


def skopeo_copy(layout: Path, tag: str, reg: Registry, dest: str, *, all_images: bool = False,
                tmp: Path, extra: tuple[str, ...] = ()) -> None:
    """skopeo copy oci:<layout>:<tag> docker://<reg>/<dest>, with an empty blob-info cache
    dir and auth file of the test's own."""
    args = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
            "--authfile", str(tmp / "skopeo-auth.json")]
    if reg.username:
        args += ["--dest-creds", f"{reg.username}:{reg.password}"]
    if all_images:
        args.append("--all")
    args += extra
    args += [f"oci:{layout}:{tag}", f"docker://{reg.host}/{dest}"]
    (tmp / "skopeo-auth.json").write_text("{}")
    env = dict(os.environ, HOME=str(tmp), XDG_RUNTIME_DIR=str(tmp))
    support.skopeo(*args[1:], env=env)


def have_tools() -> list[str]:
    return [t for t in ("docker-registry", "skopeo", "htpasswd", "openssl") if not shutil.which(t)]


# -- a fake registry for the bad cases ---------------------------------------------------------

@dataclass
class FakeRegistry:
    """Serves `manifests[(repo, ref)] = (media_type, body)` and `blobs[digest] = bytes`, with
    misbehaviour switched on per digest. `requests` logs (method, path, headers)."""
    host: str = ""
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)      # Content-Length full, half the body
    break_once: set[str] = field(default_factory=set)    # like truncate, first time only
    tamper: set[str] = field(default_factory=set)        # same length, other bytes
    fail_times: dict[str, int] = field(default_factory=dict)  # path -> 503s before success
    stall: set[str] = field(default_factory=set)          # half the body, then hang
    stalled: threading.Event = field(default_factory=threading.Event)  # a stall has begun
    release: threading.Event = field(default_factory=threading.Event)  # ends every stall
    max_parallel: int = 0                                 # most blob GETs at once
    parallel_gate: int = 0                                # blob GETs wait for this many at once
    _active: int = 0
    redirect_blobs: bool = False                          # blobs via a 307 to /cdn/<digest>
    token: str | None = None                              # Bearer auth with this token
    token_basic: str | None = None                        # /token wants this Basic header
    refresh_token: str | None = None                      # POST /token trades it for `token`
    token_forms: list[dict[str, str]] = field(default_factory=list)  # the POST /token forms
    challenge: str | None = None                          # WWW-Authenticate to send instead
    token_answer: tuple[int, bytes] | None = None         # /token answers this instead
    redirects: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (status, Location)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add_image(self, repo: str, tag: str, img: BuiltImage) -> None:
        for digest, data in img.blobs.items():
            if digest == img.manifest_digest:
                self.manifests[(repo, tag)] = (OCI_MANIFEST, data)
                self.manifests[(repo, digest)] = (OCI_MANIFEST, data)
            else:
                self.blobs[digest] = data


def _handler(fake: FakeRegistry) -> type[http.server.BaseHTTPRequestHandler]:
    lock = threading.Condition()
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            """Only the OAuth2 refresh-token grant of a token server (docker's
            fetchTokenWithOAuth): a wrong one is refused as RFC 6749 5.2 says, 400 invalid_grant."""
            fake.requests.append((self.command, self.path, dict(self.headers.items())))
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self._redirected() or self._token_answer():
                return
            if self.path != "/token":
                self._send(405)
                return
            form = dict(urllib.parse.parse_qsl(body.decode()))
            fake.token_forms.append(form)
            if form.get("grant_type") != "refresh_token" or fake.refresh_token is None or \
                    form.get("refresh_token") != fake.refresh_token:
                self._send(400, b'{"error":"invalid_grant","error_description":"refresh token unknown"}',
                           {"Content-Type": "application/json"})
                return
            self._send(200, json.dumps({"access_token": fake.token, "expires_in": 300}).encode(),
                       {"Content-Type": "application/json"})

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            fake.requests.append((self.command, self.path, dict(self.headers.items())))
            if self._redirected() or self._token_answer():
                return
            if path == "/token" and fake.token_basic and \
                    self.headers.get("Authorization") != fake.token_basic:
                self._send(401, b"bad credentials")
                return
            if path == "/token":
                self._send(200, json.dumps({"token": fake.token}).encode(),
                           {"Content-Type": "application/json"})
                return
            if fake.token and not path.startswith("/cdn/") and \
                    self.headers.get("Authorization") != f"Bearer {fake.token}":
                challenge = fake.challenge if fake.challenge is not None else (
                    f'Bearer realm="http://{fake.host}/token",service="fake",'
                    'scope="repository:test/app:pull"')
                self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                           {"WWW-Authenticate": challenge})
                return
            left = fake.fail_times.get(path, 0)
            if left:
                fake.fail_times[path] = left - 1
                self._send(503, b"busy")
                return
            parts = path.split("/")
            if path == "/v2/":
                self._send(200, b"{}")
            elif "/manifests/" in path:
                repo, ref = path[len("/v2/"):].split("/manifests/")
                found = fake.manifests.get((repo, ref))
                if found is None:
                    self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
                else:
                    self._send(200, found[1], {"Content-Type": found[0]})
            elif "/blobs/" in path and fake.redirect_blobs:
                # another host name for the same server: Authorization must not follow
                port = fake.host.rsplit(":", 1)[1]
                self._send(307, headers={"Location": f"http://localhost:{port}/cdn/{parts[-1]}"})
            elif "/blobs/" in path or path.startswith("/cdn/"):
                self._blob(parts[-1])
            else:
                self._send(404)

        def _redirected(self) -> bool:
            found = fake.redirects.get(self.path.split("?")[0])
            if found is not None:
                self._send(found[0], headers={"Location": found[1]})
            return found is not None

        def _token_answer(self) -> bool:
            if self.path.split("?")[0] != "/token" or fake.token_answer is None:
                return False
            self._send(*fake.token_answer)
            return True

        def _blob(self, digest: str) -> None:
            with lock:
                fake._active += 1
                fake.max_parallel = max(fake.max_parallel, fake._active)
                lock.notify_all()
                # hold each download until enough run at once (or time out): the test then
                # sees the client's concurrency, not how fast the first layer happened to go
                lock.wait_for(lambda: fake.max_parallel >= fake.parallel_gate, timeout=5)
            try:
                self._blob_body(digest)
            finally:
                with lock:
                    fake._active -= 1

        def _blob_body(self, digest: str) -> None:
            data = fake.blobs.get(digest)
            if data is None:
                self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                return
            if digest in fake.stall and not self.headers.get("Range"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                fake.stalled.set()
                fake.release.wait(30)
                self.close_connection = True
                return
            if digest in fake.tamper:
                data = bytes(b ^ 0xFF for b in data)
            if digest in fake.truncate or digest in fake.break_once:
                fake.break_once.discard(digest)
                self._send(200, data[: len(data) // 2], length=len(data))
                self.close_connection = True
                return
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[len("bytes="):].split("-")[0])
                self._send(206, data[start:],
                           {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                return
            self._send(200, data)

    return Handler


@contextmanager
def run_fake_registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    missing = have_tools()
    if missing:
        pytest.skip(f"requires {', '.join(missing)} (Debian docker-registry, skopeo, apache2-utils)")
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def secure_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    missing = have_tools()
    if missing:
        pytest.skip(f"requires {', '.join(missing)} (Debian docker-registry, skopeo, apache2-utils)")
    with run_registry(tmp_path_factory.mktemp("secure-registry"), secure=True) as reg:
        yield reg


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    with run_fake_registry() as fake:
        yield fake
