"""pytest plugin: run the tests marked requires("cgroup2") in the cgroup v2 VM.

Production hosts have a pure cgroup v2 hierarchy; a host whose /sys/fs/cgroup is not cgroup2
with controllers (the development machine is hybrid: controllers on v1) cannot run those tests.
There this plugin, on the host:

- moves the items that require cgroup2 to the end of the session, so that the VM never runs
  beside host tests (CPU contention under emulation, and a QEMU process the leak checks see);
- at the first of them, boots one VM (tests/vm/machine.py) whose command is
  `python -m pytest <their modules>` in the checkout, with SKIFF_IN_VM=1;
- replays, for each of those items, the reports the guest's pytest made (pass, failure with its
  traceback, skip with its reason), as they arrive; an item without reports fails with the
  console log's tail, and if the VM cannot start at all the items are skipped, saying why.

In the guest (SKIFF_IN_VM=1 and SKIFF_VM_REPORTS set) it deselects all but the host's node ids
and writes each report, serialized by pytest's own hook as pytest-xdist does, to a JSON-lines
file in the exchange directory; the host reads it while the guest runs.

SKIFF_VM=off turns the VM off (the requires marker then skips those tests), SKIFF_VM_TIMEOUT
bounds the whole guest run in seconds (default 2700), SKIFF_VM_ACCEL=kvm|tcg forces an
accelerator, SKIFF_VM_CACHE moves the image cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from _pytest.reports import CollectReport, TestReport

from . import image as vm_image
from . import machine

IN_VM = "SKIFF_IN_VM"
REPORTS = "SKIFF_VM_REPORTS"
SELECT = "SKIFF_VM_SELECT"
DEFAULT_TIMEOUT = 2700.0
CONSOLE_TAIL_LINES = 30


def host_has_cgroup2() -> bool:
    """Whether /sys/fs/cgroup is a cgroup2 mount with controllers (a pure v2 host)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/sys/fs/cgroup":
                fstype = fields[fields.index("-") + 1]
                if fstype != "cgroup2":
                    return False
    try:
        return bool(Path("/sys/fs/cgroup/cgroup.controllers").read_text().split())
    except OSError:
        return False


def needs_vm(item: pytest.Item) -> bool:
    return any("cgroup2" in m.args for m in item.iter_markers("requires"))


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(IN_VM):
        if os.environ.get(REPORTS):
            config.pluginmanager.register(GuestReporter(config), "skiff-vm-guest")
    elif os.environ.get("SKIFF_VM") != "off" and not host_has_cgroup2():
        config.pluginmanager.register(HostRunner(config), "skiff-vm-host")


class GuestReporter:
    """In the VM: run only the host's node ids, stream every report back to the host."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._out = open(os.environ[REPORTS], "a", encoding="utf-8")  # noqa: SIM115
        self._select = os.environ.get(SELECT)

    def _write(self, record: dict[str, Any]) -> None:
        # One write per line: the host reads the file while the guest writes it.
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        # The host passes module paths rather than node ids: pytest stops the whole run at one
        # node id that does not exist, and parametrization may differ between host and guest.
        if not self._select:
            return
        wanted = set(Path(self._select).read_text().splitlines())
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in wanted])
        items[:] = [i for i in items if i.nodeid in wanted]

    def pytest_collectreport(self, report: CollectReport) -> None:
        if report.failed:
            self._write({"report": self._config.hook.pytest_report_to_serializable(
                config=self._config, report=report)})

    def pytest_runtest_logreport(self, report: TestReport) -> None:
        self._write({"report": self._config.hook.pytest_report_to_serializable(
            config=self._config, report=report)})

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._write({"finished": nodeid})

    def pytest_unconfigure(self) -> None:
        self._out.close()


class GuestRun:
    """One VM running the guest's pytest, and the reports read back from it so far."""

    def __init__(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self._config = config
        image = vm_image.ensure_image()
        accel = machine.choose_accel(image)
        # The session's tmp dir: kept for debugging with pytest's usual retention.
        self.dir: Path = config._tmp_path_factory.mktemp("cgroup2-vm")  # type: ignore[attr-defined]
        self.console = self.dir / "console.log"
        xchg = self.dir / "xchg"
        xchg.mkdir()
        self._reports = xchg / "reports.jsonl"
        self._offset = 0
        self._results: dict[str, list[TestReport]] = {}
        self._finished: set[str] = set()
        self.collect_errors: list[CollectReport] = []

        (xchg / "select").write_text("".join(f"{i.nodeid}\n" for i in items))
        root = config.rootpath
        modules = list(dict.fromkeys(i.nodeid.split("::")[0] for i in items))
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(root),
                "--color=no", "-v", f"--tb={config.option.tbstyle}", *modules]
        if config.option.showlocals:
            argv.append("--showlocals")
        env = {k: v for k, v in os.environ.items() if k.startswith("SKIFF_") or k == "CI"}
        env |= {IN_VM: "1", REPORTS: f"{machine.GUEST_XCHG}/reports.jsonl",
                SELECT: f"{machine.GUEST_XCHG}/select", "PYTHONUNBUFFERED": "1"}
        vm_config = machine.VMConfig(
            image=image, xchg=xchg, shares=(root,), console=self.console, accel=accel,
            command=machine.shell_command(argv, cwd=root, env=env))
        self.accel = accel
        self._qemu_stderr = self.dir / "qemu.stderr"
        with open(self._qemu_stderr, "wb") as stderr:
            self.vm = machine.VM(vm_config, stderr=stderr)
        timeout = float(os.environ.get("SKIFF_VM_TIMEOUT", DEFAULT_TIMEOUT))
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.timed_out = False

    def _read_new(self) -> None:
        try:
            with open(self._reports, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        # The guest may be in the middle of a line: take complete lines only.
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            record = json.loads(line)
            if "finished" in record:
                self._finished.add(record["finished"])
                continue
            report = self._config.hook.pytest_report_from_serializable(
                config=self._config, data=record["report"])
            # JSON has no tuples; pytest checks that a skip's longrepr is one.
            for name in ("location", "longrepr"):
                if isinstance(getattr(report, name), list):
                    setattr(report, name, tuple(getattr(report, name)))
            if isinstance(report, CollectReport):
                self.collect_errors.append(report)
            else:
                self._results.setdefault(report.nodeid, []).append(report)

    def booted(self) -> bool:
        try:
            return b"skiff-vm: init" in self.console.read_bytes()
        except OSError:
            return False

    def reports_for(self, nodeid: str) -> list[TestReport] | None:
        """The guest's reports for nodeid, waiting for them; None if the VM ended without."""
        while True:
            ended = self.vm.poll() is not None
            self._read_new()
            if nodeid in self._finished:
                return self._results.pop(nodeid, [])
            if ended:
                return None
            if time.monotonic() > self.deadline:
                self.timed_out = True
                self.vm.kill()
                return None
            time.sleep(0.2)

    def why_no_start(self) -> str | None:
        """Why QEMU ended before the guest's /init ran, or None if it did run."""
        if self.vm.poll() is None or self.booted():
            return None
        err = self._qemu_stderr.read_text(errors="replace").strip().splitlines()
        return f"qemu exited with status {self.vm.poll()}" + (f": {err[-1]}" if err else "")

    def console_tail(self) -> str:
        try:
            text = self.console.read_text(errors="replace").replace("\r", "")
        except OSError:
            return "(no console output)"
        lines = text.splitlines()
        panic = [line for line in lines[:-CONSOLE_TAIL_LINES] if "Kernel panic" in line]
        return "\n".join(panic + lines[-CONSOLE_TAIL_LINES:])

    def finish(self, *, all_reported: bool) -> None:
        """Let the guest power off if it is done, end QEMU otherwise."""
        if self.vm.poll() is None and all_reported:
            try:
                self.vm.wait(60)
            except subprocess.TimeoutExpired:
                pass
        self.vm.kill()


def _reports(item: pytest.Item, outcome: Literal["failed", "skipped"],
             longrepr: str | tuple[str, int, str]) -> list[TestReport]:
    """A setup report with outcome and longrepr, and the passed teardown pytest adds to it."""
    keywords: dict[str, Literal[1]] = dict.fromkeys(item.keywords, 1)
    return [TestReport(item.nodeid, item.location, keywords, outcome, longrepr, "setup"),
            TestReport(item.nodeid, item.location, keywords, "passed", None, "teardown")]


class HostRunner:
    """On a host without v2 controllers: stand in for the items that need cgroup2."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._pending: list[pytest.Item] = []
        self._run: GuestRun | None = None
        self._unavailable: str | None = None
        self._trouble = False
        self._lost: str | None = None  # the first item the VM gave no result for

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items[:] = [i for i in items if not needs_vm(i)] + [i for i in items if needs_vm(i)]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._pending = [i for i in session.items if needs_vm(i)]

    def _start(self) -> None:
        reporter = self._config.pluginmanager.get_plugin("terminalreporter")
        try:
            self._run = GuestRun(self._config, self._pending)
        except (vm_image.ImageError, machine.VMError, OSError) as e:
            self._unavailable = str(e)
            return
        if reporter is not None:
            reporter.write_line(
                f"cgroup v2 VM ({self._run.accel.value}): running {len(self._pending)} tests, "
                f"console log {self._run.console}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if item not in self._pending:
            return None
        if self._run is None and self._unavailable is None:
            self._start()
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self._reports_for(item):
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        self._pending.remove(item)
        return True

    def _reports_for(self, item: pytest.Item) -> list[TestReport]:
        run = self._run
        if run is not None and self._unavailable is None:
            reports = run.reports_for(item.nodeid)
            if reports is not None:
                if any(r.failed for r in reports):
                    self._trouble = True
                return reports
            self._unavailable = run.why_no_start()
        if self._unavailable is not None:
            return _reports(item, "skipped", (
                item.location[0], (item.location[1] or 0) + 1,
                "Skipped: requires cgroup2: host has cgroup v1 controllers and the test VM "
                f"could not start: {self._unavailable}"))
        assert run is not None
        self._trouble = True
        status = run.vm.exit_status()
        if status is not None:
            # The guest's pytest ran to its end: it collected no test of this id.
            why = f"the cgroup v2 VM's pytest exited with status {status} without running this test"
        elif self._lost is not None:
            return _reports(item, "failed", f"no result from the cgroup v2 VM: see {self._lost}")
        elif run.timed_out:
            why = f"the cgroup v2 VM did not finish within {run.timeout:.0f} s (SKIFF_VM_TIMEOUT)"
        else:
            why = f"the cgroup v2 VM ended without a result (qemu exit status {run.vm.poll()})"
        if status is None:
            self._lost = item.nodeid
        text = [why]
        for error in run.collect_errors:
            text += [f"collection error in the VM, {error.nodeid}:", str(error.longrepr)]
        text += [f"console log: {run.console}; its last lines:", run.console_tail()]
        return _reports(item, "failed", "\n".join(text))

    def pytest_sessionfinish(self) -> None:
        if self._run is not None:
            self._run.finish(all_reported=not self._pending)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._run is not None and self._trouble:
            terminalreporter.write_line(f"cgroup v2 VM console log: {self._run.console}")

