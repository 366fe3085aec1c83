"""The CRI service's configuration file: defaults, overrides, and errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from skiff.cri import config
from skiff.errors import InvalidArgument, NotFound


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    assert config.load() == config.CriConfig()
    with pytest.raises(NotFound, match="no such CRI configuration file"):
        config.load(str(tmp_path / "absent.toml"))


def test_a_file_sets_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "cri.toml"
    path.write_text('socket = "/run/x.sock"\ncgroup_parent = "/kubepods"\n[network]\nmode = "cni"\npod_cidr = "10.99.0.0/16"\n')
    loaded = config.load(str(path))
    assert (loaded.socket, loaded.cgroup_parent, loaded.network.mode, loaded.network.pod_cidr) == (
        "/run/x.sock", "/kubepods", "cni", "10.99.0.0/16")
    assert loaded.network.bridge == "skiff0"


@pytest.mark.parametrize("text, message", [
    ('sockett = "/x"', "sockett: unknown setting"),
    ('[network]\nmode = "weave"', "network.mode: 'weave' is not one of bridge, cni, none"),
    ('[network]\npod_cidr = "10.0.0.1/33"', "network.pod_cidr:"),
    ('log_root = "logs"', "log_root: must be an absolute path"),
    ('state_root = 3', "state_root: expected a string, got 3"),
    ('socket = ', "cri.toml:"),
])
def test_errors_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cri.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        config.load(str(path))


def test_the_shipped_examples_parse() -> None:
    """docs/cri/: the example service configuration and the walkthrough's pod and containers."""
    from skiff.cri import client

    docs = Path(__file__).resolve().parent.parent / "docs" / "cri"
    settings = config.load(str(docs / "cri.toml"))
    assert settings.cgroup_parent == "/kubepods" and settings.network.mode == "bridge"
    pod = client.load_pod_config(str(docs / "pod.json"))
    assert pod.metadata.name == "hello" and pod.port_mappings[0].host_port == 18080
    for name in ("web", "client"):
        assert client.load_container_config(str(docs / f"{name}.json")).image.image == "localhost/busybox:demo"
