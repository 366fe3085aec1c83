"""`skiff bench start`: real runs with small counts, each as `.venv/bin/skiff` in a subprocess
(on a hybrid host it re-executes itself in a private mount namespace, as it would for a
user). The autouse leak fixture checks that no container, mount, cgroup or process outlives
a run, also one stopped with ^C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import has

from skiff.benchmark import workload
from skiff.benchmark.breakdown import durations
from skiff.runtime.trace import PHASES

pytestmark = pytest.mark.requires("busybox")

SKIFF = os.path.join(os.path.dirname(sys.executable), "skiff")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "out.json"
    done = subprocess.run([SKIFF, "bench", "start", "--json", str(out), "--png", str(tmp_path / "out.png"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done, json.loads(out.read_text())


def no_cgroups_named(tag: str) -> list[str]:
    return [os.path.join(top, d) for top, dirs, _ in os.walk("/sys/fs/cgroup") for d in dirs if tag in d]


@pytest.mark.skipif(not workload.supported(), reason="the stamp executable is x86-64 machine code")
def test_stamp_prints_the_monotonic_time_of_its_first_instruction(tmp_path: Path) -> None:
    path = tmp_path / "stamp"
    workload.write_stamp(str(path))
    assert path.read_bytes()[:4] == b"\x7fELF" and path.stat().st_size == 168
    before = time.monotonic_ns()
    done = subprocess.run([str(path)], capture_output=True)
    after = time.monotonic_ns()
    assert done.returncode == 0 and done.stderr == b""
    assert len(done.stdout) == 16
    assert before <= workload.decode(done.stdout) <= after
    assert abs(workload.decode(done.stdout) / 1e9 - time.monotonic()) < 1.0


def test_durations_put_marks_in_time_order_and_add_repeated_names() -> None:
    marks = [("begin", 100), ("fork", 250), ("spec", 130), ("namespaces", 260), ("namespaces", 300)]
    assert durations(marks) == {"spec": 30, "fork": 120, "namespaces": 50}


@pytest.mark.requires("runc")
def test_every_runtime_sequential_concurrent_and_growing(tmp_path: Path) -> None:
    runtimes = ["library", "skiff-runc", "runc"] + (["crun"] if has("crun") else []) + ["cri:skiff"]
    done, doc = bench(tmp_path, "--runtimes", ",".join(runtimes), "--count", "3", "--warmup", "1",
                      "--running", "0,2", "--concurrency", "2")

    assert [c["name"] for c in doc["contenders"]] == runtimes
    assert {c["name"]: c["sample"] for c in doc["contenders"]}["cri:skiff"] == "pod ready"
    assert doc["reference"] == "library" and doc["skipped"] == {}
    assert doc["workload"] == list(workload.workload_args())
    assert doc["options"]["count"] == 3 and doc["options"]["settle_ms"] == 30 and doc["machine"]["cpus"] >= 1
    seq = doc["sequential"]
    for name in runtimes:
        assert len(seq["samples_ms"][name]) == 3 and all(s > 0 for s in seq["samples_ms"][name])
        s = seq["summaries"][name]
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert seq["ratios"]["library"] == 1.0
    conc = doc["concurrency"]
    assert conc["threads"] == 2
    assert all(len(conc["samples_ms"][n]) == 3 and conc["containers_per_s"][n] > 0 for n in runtimes)
    growth = doc["growth"]
    assert growth["running"] == [0, 2]
    for name in runtimes:
        assert len(growth["samples_ms"][name]["0"]) == 3 and len(growth["samples_ms"][name]["2"]) == 3
        assert set(growth["p50_ms"][name]) == {"0", "2"} and growth["ratio_to_0"][name]["0"] == 1.0
    assert doc["breakdown"] is None

    table = done.stdout
    assert "p50 / library" in table and "containers/s" in table and "2 running" in table
    for name in runtimes:
        assert name in table
    assert (tmp_path / "out.png").read_bytes()[:8] == PNG_MAGIC
    assert "left" not in done.stderr  # no cgroup of the run's containers, not even an empty one
    assert no_cgroups_named("skiffbench") == []


def test_breakdown_has_every_phase(tmp_path: Path) -> None:
    done, doc = bench(tmp_path, "--runtimes", "library-warm", "--count", "3", "--warmup", "1", "--breakdown")
    breakdown = doc["breakdown"]
    expected = [p for p in PHASES if p != "workload" or workload.supported()]
    assert [p["name"] for p in breakdown["phases"]] == expected, breakdown["notes"]
    assert breakdown["runs"] == 3
    for phase in breakdown["phases"]:
        assert phase["p50"] >= 0 and phase["what"] == PHASES[phase["name"]]
        assert len(breakdown["samples_ms"][phase["name"]]) == 3
        assert all(d >= 0 for d in breakdown["samples_ms"][phase["name"]])
    assert breakdown["total_p50_ms"] > 0
    assert abs(sum(p["share"] for p in breakdown["phases"]) - 1) < 1e-6
    assert "breakdown of library-warm's start" in done.stdout


def test_a_missing_runtime_is_skipped_with_a_note(tmp_path: Path) -> None:
    # A PATH with the tools the benchmark itself needs, and no crun.
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("unshare", "mount", "umount"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    env = dict(os.environ, PATH=str(tools))
    done, doc = bench(tmp_path, "--runtimes", "library,crun,cri:ghost", "--cri-socket",
                      f"ghost={tmp_path / 'ghost.sock'}", "--count", "2", "--warmup", "0", env=env)
    assert [c["name"] for c in doc["contenders"]] == ["library"]
    assert doc["skipped"]["crun"].startswith("not found on PATH")
    assert "no CRI service answers" in doc["skipped"]["cri:ghost"]
    assert "skipped crun: not found on PATH" in done.stdout
    assert "skipped cri:ghost:" in done.stdout


def test_bad_options_are_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from skiff.cli import main

    for argv, message in ((["--runtimes", "library,podman"], "unknown runtime 'podman'"),
                          (["--running", "0,many"], "--running '0,many'"),
                          (["--cri-socket", "/run/containerd/containerd.sock"], "want NAME=PATH"),
                          (["--count", "0"], "want at least 1"),
                          (["--settle", "-5"], "--settle -5: want milliseconds"),
                          (["--json", "/nonexistent/out.json"], "no directory /nonexistent")):
        assert main(["bench", "start", *argv]) == 1
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["runc", "library"])
def test_ctrl_c_deletes_every_container(tmp_path: Path, runtime: str) -> None:
    """^C while background containers run: the benchmark deletes them and exits 130. For
    the library, the ^C also reaches containers' first processes as they are cloned."""
    if runtime == "runc" and not has("runc"):
        pytest.skip("requires runc (runc on PATH)")
    process = subprocess.Popen([SKIFF, "bench", "start", "--runtimes", runtime, "--count", "60",
                                "--warmup", "0", "--running", "0,3", "--json", str(tmp_path / "out.json"),
                                "--png", str(tmp_path / "out.png")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if f"growth: starting 3 background containers with {runtime}" in line:
                break
        else:
            raise AssertionError(f"the growth phase never started: exit {process.wait()}")
        time.sleep(0.3)  # amid the runs (the 60 take over half a second)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's ^C: the whole foreground group
        assert process.wait(timeout=60) == 130
        rest = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert not (tmp_path / "out.json").exists()
    assert rest.count(f"deleting {runtime}'s 3 background containers") == 1, rest
    assert no_cgroups_named("skiffbench") == []
