"""The hooks that run in the runtime's namespaces: prestart, createRuntime (during create),
poststart (after start) and poststop (during delete). createContainer and startContainer
hooks run inside the container, from child.py.

Each hook gets the container's state JSON on stdin. A failing prestart/createRuntime hook
fails the create; poststart and poststop failures are only warned about (runtime-spec
runtime.md: "the runtime MUST log a warning"), which the caller does.
"""

from __future__ import annotations

from skiff.errors import FailedPrecondition
from skiff.oci.spec import Hook
from skiff.runtime.plan import parse_env


class HookError(FailedPrecondition):
    pass


def run_hooks(kind: str, hooks: tuple[Hook, ...], state_json: bytes) -> None:
    import subprocess  # only specs with hooks pay for it

    for hook in hooks:
        where = f"{kind} hook {hook.path}"
        env = parse_env(hook.env)
        try:
            done = subprocess.run(
                list(hook.args or (hook.path,)), executable=hook.path, input=state_json, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=hook.timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise HookError(f"{where}: timed out after {hook.timeout}s") from e
        except OSError as e:
            raise HookError(f"{where}: {(e.strerror or str(e)).lower()}") from e
        if done.returncode != 0:
            status = (f"killed by signal {-done.returncode}" if done.returncode < 0
                      else f"exit status {done.returncode}")
            last_line = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise HookError(f"{where} failed: {status}" + (f": {last_line}" if last_line else ""))
