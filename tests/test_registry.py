"""The registry client against Debian's docker-registry (plain, and TLS + htpasswd) and a fake
registry for what a real one does not do. Network only to 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from registry_fixture import (  # noqa: F401  (fixtures)
    FakeRegistry,
    Registry,
    add_image,
    fake_registry,
    multi_platform_layout,
    registry,
    secure_registry,
    single_image_layout,
    skopeo_copy,
)

from skiff.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated, Unavailable
from skiff.images import hosts, registry as reg_client
from skiff.images.reference import InvalidReferenceError, parse
from skiff.images.registry import Client, StderrProgress, pull, push
from skiff.images.store import ContentStore


# -- references ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
    ("index.docker.io/foo/bar", "docker.io/foo/bar:latest"),
    ("localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
    ("localhost/a", "localhost/a:latest"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    ("127.0.0.1:5000/x@sha256:" + "a" * 64, "127.0.0.1:5000/x@sha256:" + "a" * 64),
    ("quay.io/x/y:v1@sha256:" + "b" * 64, "quay.io/x/y:v1@sha256:" + "b" * 64),
])
def test_reference_parse(text: str, want: str) -> None:
    assert str(parse(text)) == want


def test_reference_parts() -> None:
    r = parse("quay.io/x/y:v1@sha256:" + "b" * 64)
    assert (r.domain, r.path, r.tag, r.object) == ("quay.io", "x/y", "v1", "sha256:" + "b" * 64)
    assert parse("busybox").object == "latest"


@pytest.mark.parametrize("text", ["", "Busybox", "a//b", "x:", "x@sha256:abc", "x@md5:" + "a" * 32,
                                  "-x", "a/b:-tag", " busybox", "a/" + "b" * 300])
def test_reference_invalid(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="image reference"):
        parse(text)


# -- configuration -------------------------------------------------------------------------------

def test_config_endpoints(tmp_path: Path) -> None:
    auth = tmp_path / "config.json"
    auth.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": "dTpw"},
                                          "quay.io": {"auth": "dTpw", "identitytoken": "refresh-me"}}}))
    cfg_file = tmp_path / "registries.toml"
    cfg_file.write_text(f"""
auth_file = "{auth}"
[registries."docker.io"]
mirrors = ["http://127.0.0.1:5000", "mirror.example.com"]
[registries."mirror.example.com"]
ca_file = "/ca.pem"
username = "m"
password = "pw"
[registries."127.0.0.1:5000"]
insecure = true
""")
    cfg = hosts.load(str(cfg_file))
    eps = cfg.endpoints("docker.io")
    assert [(e.base, e.mirror) for e in eps] == [
        ("http://127.0.0.1:5000", True), ("https://mirror.example.com", True),
        ("https://registry-1.docker.io", False)]
    assert eps[1].ca_file == "/ca.pem" and eps[1].credentials is not None
    assert eps[1].credentials.username == "m"
    assert eps[2].credentials is not None and eps[2].credentials.username == "u"
    assert "pw" not in repr(eps[1])
    assert [e.base for e in cfg.endpoints("docker.io", pull=False)] == ["https://registry-1.docker.io"]
    assert cfg.endpoints("127.0.0.1:5000")[0].base == "http://127.0.0.1:5000"
    # what `docker login` saves for a registry with an OAuth2 token server: the token, not the password
    assert cfg.credentials("quay.io") == hosts.Credentials(identity_token="refresh-me")


def test_config_env_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "r.toml"
    f.write_text('[registries."a.io"]\ninsecure = "yes"\n')
    monkeypatch.setenv(hosts.ENV_PATH, str(f))
    with pytest.raises(InvalidArgument, match=r'registries."a.io".insecure: must be true or false'):
        hosts.load()
    f.write_text('[registries."a.io"]\nmirrors = ["ftp://x"]\n')
    with pytest.raises(InvalidArgument, match="scheme must be http or https"):
        hosts.load()
    f.write_text("colour = 1\n")
    with pytest.raises(InvalidArgument, match="unknown key"):
        hosts.load()
    with pytest.raises(NotFound, match="no such file"):
        hosts.load(str(tmp_path / "missing.toml"))
    monkeypatch.delenv(hosts.ENV_PATH)
    if not os.path.exists(hosts.DEFAULT_PATH):
        assert hosts.load().hosts == {}


def _config(text: str) -> hosts.RegistryConfig:
    import tomllib
    return hosts.parse(tomllib.loads(text))


def _plain(reg: Registry | FakeRegistry, extra: str = "") -> hosts.RegistryConfig:
    return _config(f'[registries."{reg.host}"]\ninsecure = true\n{extra}')


# -- against docker-registry ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Images pushed once per module: test/app:v1, test/multi:all (amd64 + arm64 index) and
    library/busybox:latest (for the mirror)."""
    tmp = tmp_path_factory.mktemp("images")
    app = single_image_layout(tmp / "app", "v1", {"hello": b"hello from skiff\n"})
    skopeo_copy(tmp / "app", "v1", registry, "test/app:v1", tmp=tmp)
    index_digest, platforms = multi_platform_layout(tmp / "multi", "all")
    skopeo_copy(tmp / "multi", "all", registry, "test/multi:all", all_images=True, tmp=tmp)
    busybox = single_image_layout(tmp / "bb", "latest", {"bin/busybox": b"not really\n"})
    skopeo_copy(tmp / "bb", "latest", registry, "library/busybox:latest", tmp=tmp)
    return {"app": app, "index": index_digest, "platforms": platforms, "busybox": busybox}


def _store(tmp_path: Path) -> ContentStore:
    return ContentStore(str(tmp_path / "store"))


def test_pull_by_tag(registry: Registry, pushed: dict[str, object], tmp_path: Path) -> None:
    app = pushed["app"]
    store = _store(tmp_path)
    out = io.StringIO()
    result = pull(f"{registry.host}/test/app:v1", store, config=_plain(registry),
                  progress=StderrProgress(out))
    assert result.digest == app.manifest_digest  # type: ignore[attr-defined]
    for digest, data in app.blobs.items():  # type: ignore[attr-defined]
        assert store.read(digest) == data
    record = store.image(f"{registry.host}/test/app:v1")
    assert record.digest == app.manifest_digest  # type: ignore[attr-defined]
    assert "done" in out.getvalue()
    # again: everything is already there
    out = io.StringIO()
    pull(f"{registry.host}/test/app:v1", store, config=_plain(registry), progress=StderrProgress(out))
    assert out.getvalue().count("already present") == 2


def test_pull_by_digest(registry: Registry, pushed: dict[str, object], tmp_path: Path) -> None:
    app = pushed["app"]
    digest = app.manifest_digest  # type: ignore[attr-defined]
    store = _store(tmp_path)
    result = pull(f"{registry.host}/test/app@{digest}", store, config=_plain(registry))
    assert result.digest == digest
    assert store.image(f"{registry.host}/test/app@{digest}").digest == digest


@pytest.mark.parametrize("platform", [None, "linux/arm64", "linux/aarch64/v8"])
def test_pull_multi_platform(registry: Registry, pushed: dict[str, object], tmp_path: Path,
                             platform: str | None) -> None:
    platforms = pushed["platforms"]
    want = platforms["linux/arm64" if platform else "linux/amd64"]  # type: ignore[index]
    store = _store(tmp_path)
    result = pull(f"{registry.host}/test/multi:all", store, config=_plain(registry),
                  platform=platform)
    assert result.digest == want.manifest_digest
    assert result.index_digest == pushed["index"]
    assert store.has(str(pushed["index"]))
    assert store.read(want.layer_digests[0]) == want.blobs[want.layer_digests[0]]
    # by the index's digest too
    by_digest = pull(f"{registry.host}/test/multi@{pushed['index']}", _store(tmp_path / "2"),
                     config=_plain(registry), platform=platform)
    assert by_digest.digest == want.manifest_digest


def test_pull_unknown_platform(registry: Registry, pushed: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no manifest for platform linux/s390x .*linux/amd64"):
        pull(f"{registry.host}/test/multi:all", _store(tmp_path), config=_plain(registry),
             platform="linux/s390x")


def test_pull_unknown_tag(registry: Registry, pushed: dict[str, object], tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(NotFound, match=rf"{registry.host}/test/app:nope: not found"):
        pull(f"{registry.host}/test/app:nope", store, config=_plain(registry))
    assert store.blobs() == [] and store.images() == []


def test_mirror_for_docker_io(registry: Registry, pushed: dict[str, object], tmp_path: Path) -> None:
    """docker.io/library/busybox:latest from a mirror on 127.0.0.1; the upstream is pointed at
    a closed local port so nothing can leave the host."""
    config = _config(f"""
[registries."docker.io"]
mirrors = ["http://{registry.host}"]
server = "http://127.0.0.1:9"
""")
    store = _store(tmp_path)
    result = pull("busybox", store, config=config)
    busybox = pushed["busybox"]
    assert result.digest == busybox.manifest_digest  # type: ignore[attr-defined]
    assert [r.name for r in store.images()] == ["docker.io/library/busybox:latest"]


def test_mirror_falls_back_to_upstream(registry: Registry, pushed: dict[str, object],
                                       fake_registry: FakeRegistry, tmp_path: Path) -> None:
    config = _config(f"""
[registries."{registry.host}"]
insecure = true
mirrors = ["http://{fake_registry.host}"]
""")
    result = pull(f"{registry.host}/test/app:v1", _store(tmp_path), config=config)
    assert result.digest == pushed["app"].manifest_digest  # type: ignore[attr-defined]
    assert any("/manifests/v1" in r[1] for r in fake_registry.requests)


def test_push_then_pull(registry: Registry, pushed: dict[str, object], tmp_path: Path) -> None:
    src = _store(tmp_path / "src")
    img = add_image(tmp_path / "layout", files={"pushed": b"by skiff\n"})
    for digest, data in img.blobs.items():
        src.put(data, digest)
    push(f"{registry.host}/test/pushed:v2", src, img.manifest_digest, config=_plain(registry))
    dst = _store(tmp_path / "dst")
    result = pull(f"{registry.host}/test/pushed:v2", dst, config=_plain(registry))
    assert result.digest == img.manifest_digest
    assert dst.read(img.layer_digests[0]) == img.blobs[img.layer_digests[0]]


# -- TLS and basic auth --------------------------------------------------------------------------

def test_tls_basic_auth(secure_registry: Registry, tmp_path: Path) -> None:
    reg = secure_registry
    img = single_image_layout(tmp_path / "layout", "v1", {"secret": b"tls\n"})
    skopeo_copy(tmp_path / "layout", "v1", reg, "test/secure:v1", tmp=tmp_path)
    ref = f"{reg.host}/test/secure:v1"
    with pytest.raises(Unauthenticated, match="no credentials configured"):
        pull(ref, _store(tmp_path / "a"), config=_config(
            f'[registries."{reg.host}"]\nca_file = "{reg.ca_file}"\n'))
    with pytest.raises(Unauthenticated, match="unauthorized"):
        pull(ref, _store(tmp_path / "b"), config=_config(
            f'[registries."{reg.host}"]\nca_file = "{reg.ca_file}"\nusername = "skiff"\n'
            'password = "wrong"\n'), client=None)
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        pull(ref, _store(tmp_path / "c"), config=_config(
            f'[registries."{reg.host}"]\nusername = "skiff"\npassword = "x"\n'),
             client=Client(_config(f'[registries."{reg.host}"]\n'), retries=0))
    # credentials from a docker config.json, the CA from the config
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {reg.host: {"username": reg.username,
                                                     "password": reg.password}}}))
    config = _config(f'[registries."{reg.host}"]\nca_file = "{reg.ca_file}"\n'
                     f'auth_file = "{auth}"\n')
    result = pull(ref, _store(tmp_path / "d"), config=config)
    assert result.digest == img.manifest_digest
    # skip_verify instead of the CA
    config = _config(f'[registries."{reg.host}"]\nskip_verify = true\nusername = "{reg.username}"\n'
                     f'password = "{reg.password}"\n')
    assert pull(ref, _store(tmp_path / "e"), config=config).digest == img.manifest_digest
    # skiff's push through TLS and basic auth
    src = _store(tmp_path / "src")
    mine = add_image(tmp_path / "mine", files={"mine": b"pushed\n"})
    for digest, data in mine.blobs.items():
        src.put(data, digest)
    push(f"{reg.host}/test/mine:v1", src, mine.manifest_digest, config=config)
    assert pull(f"{reg.host}/test/mine:v1", _store(tmp_path / "f"),
                config=config).digest == mine.manifest_digest


# -- against the fake registry -------------------------------------------------------------------

@pytest.fixture
def fake_app(fake_registry: FakeRegistry, tmp_path: Path) -> tuple[FakeRegistry, object]:
    img = add_image(tmp_path / "fake-layout", files={"x": os.urandom(300_000)})
    fake_registry.add_image("test/app", "v1", img)
    return fake_registry, img


def _fast(fake: FakeRegistry, retries: int = 2) -> Client:
    return Client(_plain(fake), retries=retries, backoff=0.01)


def test_fake_ok_with_bearer_redirect_and_retries(fake_app: tuple[FakeRegistry, object],
                                                  tmp_path: Path) -> None:
    fake, img = fake_app
    fake.token = "tok-123"
    fake.redirect_blobs = True
    fake.fail_times["/v2/test/app/manifests/v1"] = 2
    store = _store(tmp_path)
    with _fast(fake) as client:
        result = pull(f"{fake.host}/test/app:v1", store, client=client)
    assert result.digest == img.manifest_digest  # type: ignore[attr-defined]
    token_requests = [r for r in fake.requests if r[1].startswith("/token")]
    assert token_requests and "scope=repository%3Atest%2Fapp%3Apull" in token_requests[0][1]
    cdn = [r for r in fake.requests if r[1].startswith("/cdn/")]
    assert cdn and all("Authorization" not in r[2] for r in cdn)


def test_fake_resume_with_range(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    fake, img = fake_app
    layer = img.layer_digests[0]  # type: ignore[attr-defined]
    fake.break_once.add(layer)
    store = _store(tmp_path)
    with _fast(fake) as client:
        pull(f"{fake.host}/test/app:v1", store, client=client)
    assert store.read(layer) == fake.blobs[layer]
    ranges = [r[2].get("Range") for r in fake.requests if r[1].endswith(layer)]
    assert ranges == [None, f"bytes={len(fake.blobs[layer]) // 2}-"]


def test_fake_digest_mismatch(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    fake, img = fake_app
    layer = img.layer_digests[0]  # type: ignore[attr-defined]
    fake.tamper.add(layer)
    store = _store(tmp_path)
    with _fast(fake) as client, pytest.raises(InvalidArgument, match=layer):
        pull(f"{fake.host}/test/app:v1", store, client=client)
    assert not store.has(layer) and store.images() == []
    assert not store.has(img.manifest_digest)  # type: ignore[attr-defined]


def test_fake_truncated(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    fake, img = fake_app
    layer = img.layer_digests[0]  # type: ignore[attr-defined]
    fake.truncate.add(layer)
    store = _store(tmp_path)
    with _fast(fake, retries=1) as client, pytest.raises(Unavailable, match=rf"{layer}.*body ended at"):
        pull(f"{fake.host}/test/app:v1", store, client=client)
    assert not store.has(layer) and store.images() == []


def test_fake_manifest_tampered(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    fake, img = fake_app
    digest = img.manifest_digest  # type: ignore[attr-defined]
    media, body = fake.manifests[("test/app", digest)]
    fake.manifests[("test/app", digest)] = (media, body + b" ")
    with _fast(fake) as client, pytest.raises(InvalidArgument, match="manifest digest mismatch"):
        pull(f"{fake.host}/test/app@{digest}", _store(tmp_path), client=client)


@pytest.mark.parametrize("where", ["manifest", "layer"])
def test_fake_unknown_media_type(fake_app: tuple[FakeRegistry, object], tmp_path: Path,
                                 where: str) -> None:
    fake, img = fake_app
    media, body = fake.manifests[("test/app", "v1")]
    data = json.loads(body)
    if where == "manifest":
        data["mediaType"] = "application/vnd.docker.distribution.manifest.v1+prettyjws"
        media = data["mediaType"]
    else:
        data["layers"][0]["mediaType"] = "application/x-surprise"
    fake.manifests[("test/app", "v1")] = (media, json.dumps(data).encode())
    store = _store(tmp_path)
    with _fast(fake) as client, pytest.raises(reg_client.UnsupportedMediaTypeError,
                                              match="unsupported .*media type"):
        pull(f"{fake.host}/test/app:v1", store, client=client)
    assert store.blobs() == [] and store.images() == []


def test_fake_unavailable_after_retries(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    fake, _ = fake_app
    fake.fail_times["/v2/test/app/manifests/v1"] = 100
    with _fast(fake) as client, pytest.raises(Unavailable, match="HTTP 503.*after 3 attempts"):
        pull(f"{fake.host}/test/app:v1", _store(tmp_path), client=client)


def test_fake_layers_concurrently(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    fake = fake_registry
    img = add_image(tmp_path / "layout", files={"a": os.urandom(2_000_000)},
                    more_layers=tuple({f"l{i}": os.urandom(2_000_000)} for i in range(5)))
    fake.add_image("test/app", "v1", img)
    fake.parallel_gate = 4
    store = _store(tmp_path)
    with _fast(fake) as client:
        pull(f"{fake.host}/test/app:v1", store, client=client, workers=4)
    assert all(store.has(d) for d in img.layer_digests)
    assert fake.max_parallel == 4


_PULL_SCRIPT = """
import sys, tomllib
from skiff.images import hosts
from skiff.images.registry import pull
from skiff.images.store import ContentStore
cfg = hosts.parse(tomllib.loads(sys.argv[3]))
pull(sys.argv[1], ContentStore(sys.argv[2]), config=cfg)
"""


def _sizes(directory: Path) -> list[int]:
    """The sizes of the files in `directory`; one that goes meanwhile (another blob done and
    moved into the store) is not counted."""
    sizes = []
    for f in directory.iterdir():
        try:
            sizes.append(f.stat().st_size)
        except FileNotFoundError:
            pass
    return sizes


def test_pull_killed_halfway_resumes(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    """A pull killed (SIGKILL) mid-layer; the next pull asks only for the rest."""
    import subprocess
    import sys
    fake, img = fake_app
    layer = img.layer_digests[0]  # type: ignore[attr-defined]
    fake.stall.add(layer)
    ref = f"{fake.host}/test/app:v1"
    toml = f'[registries."{fake.host}"]\ninsecure = true\n'
    proc = subprocess.Popen([sys.executable, "-c", _PULL_SCRIPT, ref, str(tmp_path / "store"), toml])
    try:
        assert fake.stalled.wait(30), "the pull never reached the layer"
        # the half already sent lands in the store's ingest file
        ingest = tmp_path / "store" / "ingest"
        half = len(fake.blobs[layer]) // 2
        for _ in range(200):
            if half in _sizes(ingest):
                break
            import time
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    fake.release.set()
    store = _store(tmp_path)
    with _fast(fake) as client:
        pull(ref, store, client=client)
    assert store.read(layer) == fake.blobs[layer]
    ranges = [r[2].get("Range") for r in fake.requests if r[1].endswith(layer)]
    assert ranges == [None, f"bytes={half}-"]


def test_two_pulls_at_once(registry: Registry, pushed: dict[str, object], tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor
    store = _store(tmp_path)
    ref = f"{registry.host}/test/multi:all"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: pull(ref, store, config=_plain(registry)), range(2)))
    assert results[0].digest == results[1].digest
    assert store.image(ref).digest == results[0].digest


def test_fake_bearer_with_credentials(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    import base64
    fake, img = fake_app
    fake.token = "tok-456"
    fake.token_basic = "Basic " + base64.b64encode(b"me:pw").decode()
    bad = _config(f'[registries."{fake.host}"]\ninsecure = true\nusername = "me"\npassword = "no"\n')
    with Client(bad, retries=0) as client, pytest.raises(Unauthenticated, match="token refused"):
        pull(f"{fake.host}/test/app:v1", _store(tmp_path / "a"), client=client)
    good = _config(f'[registries."{fake.host}"]\ninsecure = true\nusername = "me"\npassword = "pw"\n')
    with Client(good, retries=0) as client:
        result = pull(f"{fake.host}/test/app:v1", _store(tmp_path / "b"), client=client)
    assert result.digest == img.manifest_digest  # type: ignore[attr-defined]


# -- token auth: what a secret may reach, and what each failure is ------------------------------

def _credentials(fake: FakeRegistry, **given: str) -> hosts.RegistryConfig:
    """The fake as an insecure registry with `given` credentials (tokens too, which only an auth
    file or the CRI request carry)."""
    return hosts.RegistryConfig(hosts={fake.host: hosts.HostConfig(
        insecure=True, credentials=hosts.Credentials(**given))})


def _other_host(fake: FakeRegistry, path: str) -> str:
    """The fake under another name (localhost for 127.0.0.1): another host to the client."""
    return f"http://localhost:{fake.host.rsplit(':', 1)[1]}{path}"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_identity_token_post_is_not_redirected(fake_app: tuple[FakeRegistry, object], tmp_path: Path,
                                               status: int) -> None:
    """A realm answering the refresh-token POST with a redirect (to plain HTTP on another host
    here) would get the refresh token carried on by a 307/308: the redirect is an error."""
    fake, _ = fake_app
    fake.token, fake.refresh_token = "access-3", "refresh-3"
    fake.redirects["/token"] = (status, _other_host(fake, "/stolen"))
    with Client(_credentials(fake, identity_token="refresh-3"), retries=0) as client, \
            pytest.raises(Unavailable, match=rf"/token: identity token request redirected \(HTTP "
                                             rf"{status} to 'http://localhost:.*/stolen'\): not followed"):
        pull(f"{fake.host}/test/app:v1", _store(tmp_path), client=client)
    assert not [r for r in fake.requests if r[1].startswith("/stolen")]
    assert [r[0] for r in fake.requests if r[1].startswith("/token")] == ["POST"]


def test_secrets_to_a_plain_http_realm_on_another_host(fake_app: tuple[FakeRegistry, object],
                                                       tmp_path: Path) -> None:
    """`insecure = true` is said of the registry's host: a plain-HTTP realm elsewhere gets no
    identity token (FailedPrecondition, nothing sent) and no Basic credentials (asked
    anonymously; the refusal says why)."""
    import base64
    fake, _ = fake_app
    fake.token, fake.refresh_token = "access-4", "refresh-4"
    fake.token_basic = "Basic " + base64.b64encode(b"me:pw").decode()
    fake.challenge = f'Bearer realm="{_other_host(fake, "/token")}",service="fake"'
    ref = f"{fake.host}/test/app:v1"
    with Client(_credentials(fake, identity_token="refresh-4"), retries=0) as client, \
            pytest.raises(FailedPrecondition, match=r"localhost:\d+/token: an identity token is not "
                                                    rf"sent to a plain-HTTP realm that is not "
                                                    rf"http://{fake.host} itself"):
        pull(ref, _store(tmp_path / "a"), client=client)
    assert not [r for r in fake.requests if r[0] == "POST"]
    with Client(_credentials(fake, username="me", password="pw"), retries=0) as client, \
            pytest.raises(Unauthenticated, match=rf"token refused .*\(HTTP 401\); the credentials "
                                                 rf"for {fake.host} were not sent, the realm is "
                                                 rf"plain HTTP and not http://{fake.host} itself"):
        pull(ref, _store(tmp_path / "b"), client=client)
    token_requests = [r for r in fake.requests if r[1].startswith("/token")]
    assert token_requests and all("Authorization" not in r[2] for r in token_requests)
    # the same realm under the registry's own host name gets them
    fake.challenge = f'Bearer realm="http://{fake.host}/token",service="fake"'
    with Client(_credentials(fake, username="me", password="pw"), retries=0) as client:
        pull(ref, _store(tmp_path / "c"), client=client)
    assert [r for r in fake.requests if r[1].startswith("/token")][-1][2].get("Authorization") == \
        fake.token_basic


def test_basic_credentials_do_not_follow_a_realm_redirect_to_another_host(
        fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    import base64
    fake, _ = fake_app
    fake.token = "access-5"
    fake.token_basic = "Basic " + base64.b64encode(b"me:pw").decode()
    fake.redirects["/token"] = (307, _other_host(fake, "/stolen"))
    with Client(_credentials(fake, username="me", password="pw"), retries=0) as client, \
            pytest.raises(Unauthenticated, match="token refused"):
        pull(f"{fake.host}/test/app:v1", _store(tmp_path), client=client)
    stolen = [r for r in fake.requests if r[1].startswith("/stolen")]
    assert stolen and all("Authorization" not in r[2] for r in stolen)
    assert [r[2].get("Authorization") for r in fake.requests if r[1].startswith("/token")] == \
        [fake.token_basic]


@pytest.mark.parametrize("challenge, answer, given, message", [
    ('Bearer service="fake"', None, {}, "bearer challenge without a realm"),
    ('Negotiate abc', None, {}, "unsupported auth challenge 'Negotiate abc'"),
    ("", None, {}, "401 without a WWW-Authenticate challenge"),
    (None, (404, b"no such page"), {}, r"/token: token request failed: HTTP 404$"),
    (None, (503, b"busy"), {}, r"/token: token request failed: HTTP 503 \(after 2 attempts\)"),
    (None, (200, b'{"expires_in": 60}'), {}, "/token: token response without a token"),
    (None, (400, b'{"error":"unsupported_grant_type"}'), {"identity_token": "r"},
     "/token: identity token request failed: HTTP 400: unsupported_grant_type"),
])
def test_registry_misbehaving_is_unavailable(fake_app: tuple[FakeRegistry, object], tmp_path: Path,
                                             challenge: str | None, answer: tuple[int, bytes] | None,
                                             given: dict[str, str], message: str) -> None:
    """Not a refusal of any credentials: Unavailable, so that the next mirror is tried."""
    fake, _ = fake_app
    fake.token, fake.challenge, fake.token_answer = "access-6", challenge, answer
    with Client(_credentials(fake, **given), retries=1, backoff=0.01) as client, \
            pytest.raises(Unavailable, match=message) as err:
        pull(f"{fake.host}/test/app:v1", _store(tmp_path), client=client)
    assert not isinstance(err.value, Unauthenticated)


def test_a_misbehaving_mirror_falls_back_to_upstream(fake_app: tuple[FakeRegistry, object],
                                                     tmp_path: Path) -> None:
    from registry_fixture import run_fake_registry
    upstream, img = fake_app
    with run_fake_registry() as mirror:
        mirror.token, mirror.challenge = "x", 'Bearer service="no-realm"'
        config = _config(f'[registries."{upstream.host}"]\ninsecure = true\n'
                         f'mirrors = ["http://{mirror.host}"]\n')
        with Client(config, retries=0) as client:
            result = pull(f"{upstream.host}/test/app:v1", _store(tmp_path), client=client)
    assert result.digest == img.manifest_digest  # type: ignore[attr-defined]
    assert mirror.requests


@pytest.mark.parametrize("given, message", [
    ({"identity_token": "r"}, "an identity token"),
    ({"registry_token": "t"}, "a registry token"),
    ({"registry_token": "t", "identity_token": "r"}, "a registry token and an identity token"),
])
def test_tokens_cannot_answer_basic(fake_app: tuple[FakeRegistry, object], tmp_path: Path,
                                    given: dict[str, str], message: str) -> None:
    fake, _ = fake_app
    fake.token, fake.challenge = "access-7", 'Basic realm="fake"'
    with Client(_credentials(fake, **given), retries=0) as client, \
            pytest.raises(Unauthenticated, match=rf"basic auth required: {message} configured for "
                                                 rf"{fake.host}, which cannot answer a Basic challenge"):
        pull(f"{fake.host}/test/app:v1", _store(tmp_path), client=client)


@pytest.mark.parametrize("challenge, given, suffix", [
    (None, {"registry_token": "wrong"}, True),
    # Basic was sent and refused: the registry token configured as well was never tried
    ('Basic realm="fake"', {"username": "me", "password": "pw", "registry_token": "t"}, False),
    (None, {"username": "me", "password": "pw", "registry_token": "wrong"}, True),
])
def test_registry_token_named_only_when_sent(fake_app: tuple[FakeRegistry, object], tmp_path: Path,
                                             challenge: str | None, given: dict[str, str],
                                             suffix: bool) -> None:
    fake, _ = fake_app
    fake.token, fake.challenge = "access-8", challenge
    with Client(_credentials(fake, **given), retries=0) as client, \
            pytest.raises(Unauthenticated, match=r"unauthorized \(repository test/app\)") as err:
        pull(f"{fake.host}/test/app:v1", _store(tmp_path), client=client)
    assert str(err.value).endswith(": the registry token was refused") is suffix


@pytest.mark.parametrize("status, method", [(301, "GET"), (302, "GET"), (303, "GET"),
                                            (307, "POST"), (308, "POST")])
def test_redirect_of_a_post(fake_registry: FakeRegistry, status: int, method: str) -> None:
    """Go's http.Client: 301/302/303 turn a POST into a GET without its body; 307/308 repeat it."""
    fake = fake_registry
    fake.redirects["/v2/test/app/blobs/uploads/"] = (status, "/token")
    form = b"grant_type=refresh_token&refresh_token=r"
    with _fast(fake) as client:
        ep = client.config.endpoints(fake.host)[0]
        resp = client.request(ep, "POST", "/v2/test/app/blobs/uploads/", repository="test/app",
                              body=form, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                  "Content-Length": str(len(form))})
        resp.read()
    last = fake.requests[-1]
    assert (last[0], last[1]) == (method, "/token")
    if method == "GET":
        assert resp.status == 200 and fake.token_forms == []
        assert "Content-Length" not in last[2] and "Content-Type" not in last[2]
    else:
        assert resp.status == 400 and fake.token_forms == [{"grant_type": "refresh_token",
                                                            "refresh_token": "r"}]


def test_bad_partial_is_refetched(fake_app: tuple[FakeRegistry, object], tmp_path: Path) -> None:
    """A kept partial download that is wrong fails at commit; the pull starts that blob over."""
    fake, img = fake_app
    layer = img.layer_digests[0]  # type: ignore[attr-defined]
    size = len(fake.blobs[layer])
    store = _store(tmp_path)
    with store.writer(expected_digest=layer, expected_size=size, resume_key=layer) as w:
        w.write(b"\0" * 1000)  # left without commit: kept for resuming
    with _fast(fake) as client:
        pull(f"{fake.host}/test/app:v1", store, client=client)
    assert store.read(layer) == fake.blobs[layer]
    ranges = [r[2].get("Range") for r in fake.requests if r[1].endswith(layer)]
    assert ranges == ["bytes=1000-", None]


def test_pull_docker_schema2(registry: Registry, tmp_path: Path) -> None:
    """skopeo --format v2s2 rewrites the image as a Docker schema 2 manifest."""
    img = single_image_layout(tmp_path / "layout", "v1", {"docker": b"v2s2\n"})
    skopeo_copy(tmp_path / "layout", "v1", registry, "test/docker:v1", tmp=tmp_path,
                extra=("--format", "v2s2"))
    store = _store(tmp_path)
    result = pull(f"{registry.host}/test/docker:v1", store, config=_plain(registry))
    assert result.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert result.manifest.layers[0].media_type == \
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert store.read(img.layer_digests[0]) == img.blobs[img.layer_digests[0]]


def test_progress_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True
    out = Tty()
    p = StderrProgress(out)
    p.start("sha256:aa", 2000, 0)
    p.advance("sha256:aa", 2000)
    p.finish("sha256:aa")
    p.close()
    assert out.getvalue().endswith("\rblobs 1/1  2.0 KB / 2.0 KB\x1b[K\n")
