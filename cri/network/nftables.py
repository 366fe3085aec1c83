"""nft commands through libnftables, the library the `nft` command line is a front of.

Running the `nft` binary costs a fork and an exec per command (about 7 ms here, three times
per pod); the library runs the same command text in-process. libnftables1 comes with
Debian's nftables package. Its Python binding (python3-nftables) is Debian-only, not on
PyPI, so these few calls are made with ctypes, as runtime/seccomp.py does for libseccomp.

A context is made per call: libnftables contexts are not thread-safe, and one costs less
than a millisecond to make.
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
    lib = _library()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NetworkError("libnftables: nft_ctx_new failed")
    try:
        lib.nft_ctx_output_set_flags(ctx, (_OUTPUT_JSON if json else 0) | (_OUTPUT_HANDLE if handles else 0))
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, commands.encode()) != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
            raise NetworkError(f"nft: {error}\ncommands:\n{commands.strip()}")
        return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
    finally:
        lib.nft_ctx_free(ctx)
