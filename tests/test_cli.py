"""skiff-runc, driven as containerd or conmon drive runc: commands, flags, JSON, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.requires("busybox")

SKIFF_RUNC = os.path.join(os.path.dirname(sys.executable), "skiff-runc")


class Cli:
    def __init__(self, root: Path, bundle: Path) -> None:
        self.root = root
        self.bundle = bundle

    def __call__(self, *args: str, check: bool = True, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        flags = ["--root", str(self.root)] + (["--log", str(log), "--log-format", "json"] if log else [])
        # Files, not pipes: a container started here inherits them and outlives the command.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            returncode = subprocess.run([SKIFF_RUNC, *flags, *args], stdout=out, stderr=err, timeout=60).returncode
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(args, returncode, out.read(), err.read())
        if check and done.returncode != 0:
            raise AssertionError(f"skiff-runc {' '.join(args)}: exit {done.returncode}: {done.stderr}")
        return done

    def config(self, args: list[str], **process: Any) -> None:
        path = self.bundle / "config.json"
        config = json.loads(path.read_text())
        config["process"].update(args=args, terminal=False, **process)
        path.write_text(json.dumps(config))

    def state(self, cid: str) -> dict[str, Any]:
        return json.loads(self("state", cid).stdout)  # type: ignore[no-any-return]

    def cleanup(self) -> None:
        for cid in self("list", "-q").stdout.split():
            self("delete", "--force", cid)


@pytest.fixture
def cli(tmp_path: Path, bundle: Path) -> Any:
    c = Cli(tmp_path / "state", bundle)
    yield c
    c.cleanup()


def wait_status(cli: Cli, cid: str, status: str) -> None:
    deadline = time.monotonic() + 10
    while cli.state(cid)["status"] != status:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_lifecycle(cli: Cli) -> None:
    cli.config(["sleep", "60"])
    pid_file = cli.bundle / "init.pid"
    cli("create", "--bundle", str(cli.bundle), "--pid-file", str(pid_file), "c1")
    state = cli.state("c1")
    assert set(state) >= {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"}
    assert state["status"] == "created" and state["pid"] == int(pid_file.read_text())
    assert state["bundle"] == str(cli.bundle)
    cli("start", "c1")
    assert cli.state("c1")["status"] == "running"
    listing = cli("list").stdout.splitlines()
    assert listing[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert listing[1].split()[:3] == ["c1", str(state["pid"]), "running"]
    assert json.loads(cli("list", "--format", "json").stdout)[0]["id"] == "c1"
    assert json.loads(cli("ps", "--format", "json", "c1").stdout) == [state["pid"]]
    assert "sleep 60" in cli("ps", "c1").stdout
    cli("pause", "c1")
    assert cli.state("c1")["status"] == "paused"
    cli("resume", "c1")
    stats = json.loads(cli("events", "--stats", "c1").stdout)
    assert stats["type"] == "stats" and stats["id"] == "c1" and "memory" in stats["data"]
    exec_ = cli("exec", "c1", "sh", "-c", "echo $$ in $(hostname); exit 5", check=False)
    assert (exec_.returncode, exec_.stdout) == (5, "2 in runc\n")
    refused = cli("delete", "c1", check=False)
    assert refused.returncode == 1 and "not stopped: running" in refused.stderr
    cli("kill", "c1", "KILL")
    wait_status(cli, "c1", "stopped")
    assert cli.state("c1")["pid"] == 0
    cli("delete", "c1")
    assert cli("list", "-q").stdout == ""
    missing = cli("state", "c1", check=False)
    assert missing.returncode == 1 and "container 'c1' does not exist" in missing.stderr


def test_run_exits_with_the_containers_code(cli: Cli) -> None:
    cli.config(["sh", "-c", "echo hello; exit 7"])
    done = cli("run", "--bundle", str(cli.bundle), "r1", check=False)
    assert (done.returncode, done.stdout) == (7, "hello\n")
    assert cli("list", "-q").stdout == ""


def test_run_detached_then_kill_by_signal_number(cli: Cli) -> None:
    cli.config(["sleep", "60"])
    cli("run", "-d", "--bundle", str(cli.bundle), "d1")
    assert cli.state("d1")["status"] == "running"
    cli("kill", "d1", "9")
    wait_status(cli, "d1", "stopped")
    cli("delete", "d1")


def test_exec_with_a_process_file(cli: Cli, tmp_path: Path) -> None:
    cli.config(["sleep", "60"])
    cli("run", "-d", "--bundle", str(cli.bundle), "e1")
    process = json.loads((cli.bundle / "config.json").read_text())["process"]
    process.update(args=["sh", "-c", "id -u; pwd"], cwd="/tmp", user={"uid": 1234, "gid": 1234})
    (tmp_path / "process.json").write_text(json.dumps(process))
    done = cli("exec", "--process", str(tmp_path / "process.json"), "e1")
    assert done.stdout == "1234\n/tmp\n"
    cli("delete", "--force", "e1")


def test_errors_are_clear_and_logged_as_json(cli: Cli, tmp_path: Path) -> None:
    cli.config([])
    log = tmp_path / "runc.log"
    done = cli("create", "--bundle", str(cli.bundle), "bad", check=False, log=log)
    assert done.returncode == 1
    assert done.stderr == f"skiff-runc: {cli.bundle}/config.json: process.args: must be a non-empty list\n"
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and entry["msg"].endswith("process.args: must be a non-empty list")
    cli.config(["/no/such/binary"])
    done = cli("run", "--bundle", str(cli.bundle), "bad", check=False)
    assert done.returncode == 1
    assert 'exec: "/no/such/binary": no such file or directory' in done.stderr
    assert cli("list", "-q").stdout == ""
    bad_signal = cli("kill", "nobody", "SIGFOO", check=False)
    assert bad_signal.returncode == 1 and "signal 'SIGFOO': unknown signal" in bad_signal.stderr


def test_spec_and_features(tmp_path: Path) -> None:
    from skiff.oci import load_spec

    cli = Cli(tmp_path / "state", tmp_path)
    cli("spec", "--bundle", str(tmp_path))
    spec = load_spec(tmp_path / "config.json")
    assert spec.process is not None and spec.process.args == ("sh",)
    again = cli("spec", "--bundle", str(tmp_path), check=False)
    assert again.returncode == 1 and "file exists" in again.stderr
    features = json.loads(cli("features").stdout)
    assert features["ociVersionMax"] == "1.2.0"
    assert "user" in features["linux"]["namespaces"]
