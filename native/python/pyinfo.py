"""Prints what native/python/build.mk needs to know about the interpreter
running this script, on one line: X.Y key home include libdir ldversion
soname shared (make splits it with $(word); no spaces in paths).

PY_KEY must equal what venv.h computes at run time from a venv's pyvenv.cfg:
FNV-1a 32 of realpath(home), home being the base interpreter's bin directory
(the `home` of the venv this runs in, else the interpreter's own directory).
"""

import os
import sys
import sysconfig


def home() -> str:
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    if sys.prefix != sys.base_prefix and os.path.isfile(cfg):
        with open(cfg) as f:
            for line in f:
                key, eq, value = line.partition("=")
                if eq and key.strip() == "home":
                    return value.strip()
    return os.path.dirname(sys.executable)


def fnv1a32(data: bytes) -> str:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return f"{h:08x}"


def main() -> None:
    real_home = os.path.realpath(home())
    var = sysconfig.get_config_var
    words = [
        f"{sys.version_info[0]}.{sys.version_info[1]}",
        fnv1a32(os.fsencode(real_home)),
        real_home,
        sysconfig.get_paths()["include"],
        var("LIBDIR"),
        var("LDVERSION"),
        var("INSTSONAME"),
        var("Py_ENABLE_SHARED") or 0,
    ]
    print(" ".join(str(w) for w in words))


if __name__ == "__main__":
    main()
