"""docs/benchmarks.md holds one section per benchmark, each between its own markers
(`<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`), so that a benchmark script rewrites its
own results and keeps everything else in the file."""

from __future__ import annotations

import os
import platform
import re
import sys
import time

HEADER = "# Benchmarks\n"


def write_section(path: str, name: str, body: str) -> None:
    """Replace section `name` of the markdown file `path` with `body`, or append it; the file
    is created (with its title) if missing, and replaced atomically."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n{body.strip()}\n{end}"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def machine(*tools: str) -> str:
    """The line that says where and when a benchmark ran, with the versions of `tools`."""
    parts = [f"{os.cpu_count()} CPUs", f"kernel {platform.release()}", *tools,
             f"Python {platform.python_version()}", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())]
    return f"Machine: {', '.join(parts)}."


def publish(path: str, name: str, body: str, what: str) -> None:
    """Section `name` of `path` becomes `body`, and the run says so on stderr."""
    write_section(path, name, body)
    print(f"{what}: wrote section {name} of {path}", file=sys.stderr)
