"""nft commands through libnftables, the library the `nft` command line is a front of.

Running the `nft` binary costs a fork and an exec per command (about 7 ms here, three times
per pod); the library runs the same command text in-process. libnftables1 comes with
Debian's nftables package. Its Python binding (python3-nftables) is Debian-only, not on
PyPI, so these few calls are made with ctypes, as runtime/seccomp.py does for libseccomp.

`run` makes a context per call: libnftables contexts are not thread-safe, and one costs less
than a millisecond to make. A `Session` keeps one for a single thread that changes rules
often (the service proxy): closing a context's netlink socket after a transaction that
deleted something waits for the kernel to release what it deleted (an RCU grace period,
7-30 ms here), where a kept socket lets the kernel do that in the background.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from skiff.cri.network import NetworkError

# nftables.h: output flags
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4

_lib: ctypes.CDLL | None = None
_load_lock = threading.Lock()


def _library() -> ctypes.CDLL:
    global _lib
    with _load_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1", use_errno=True)
            except OSError as e:
                raise NetworkError(f"libnftables: cannot load it (Debian package nftables): {e}") from e
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _lib = lib
        return _lib


def run(commands: str, *, json: bool = False, handles: bool = False) -> str:
    """Run `commands` (nft syntax, one transaction) and return their output. Errors raise
    NetworkError with nft's own message and the commands."""
    with Session() as session:
        return session.run(commands, json=json, handles=handles)


class Session:
    """One libnftables context, for one thread at a time. Make it in the thread (so the network
    namespace) whose rules it is to change: nft_ctx_new opens its netlink socket there."""

    def __init__(self) -> None:
        self._lib = _library()
        self._ctx = self._lib.nft_ctx_new(0)
        if not self._ctx:
            raise NetworkError("libnftables: nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)

    def run(self, commands: str, *, json: bool = False, handles: bool = False, quote: int = 2000) -> str:
        """`quote`: how much of the commands an error shows (a full sync is megabytes)."""
        lib, ctx = self._lib, self._ctx
        lib.nft_ctx_output_set_flags(ctx, (_OUTPUT_JSON if json else 0) | (_OUTPUT_HANDLE if handles else 0))
        if lib.nft_run_cmd_from_buffer(ctx, commands.encode()) != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
            shown = commands.strip()
            if len(shown) > quote:
                shown = shown[:quote] + f"\n... ({len(shown) - quote} more characters)"
            raise NetworkError(f"nft: {error[:quote]}\ncommands:\n{shown}")
        return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
