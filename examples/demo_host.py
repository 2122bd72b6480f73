"""Demo without a proxy: the C test host (a proxy stand-in) calls three runtimes.

    .venv/bin/python examples/demo_host.py

An aioresty app (async def handlers), lua-resty-ffi's legacy Python form
(ffi.echo, its own polling thread) and a C runtime, all behind the same queue ABI.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostlib import Host, build_testhost


def main() -> int:
    host = Host(build_testhost(Path(tempfile.mkdtemp(prefix="aioresty-demo-"))))
    steps = [
        ("app", "aioresty", "myapp.handlers", "greet", "text:envoy"),
        ("legacy", "resty_ffi_python", "ffi.echo?,init", "echo", "text:hello"),
        ("c", "ffi_c_echo", "-", "foobar", "text:foobar"),
    ]
    for name, lib, cfg, method, payload in steps:
        host.ok(f"load {name} {lib} {cfg}")
        answer = host.call(name, method, payload)
        print(f"{lib}({cfg}):{method}({payload[5:]!r}) -> rc={answer.rc} {answer.text!r}")
    print(host.close())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
