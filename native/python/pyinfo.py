"""Prints what native/python/build.mk needs to know about the interpreter
running this script, on one line: X.Y include (make splits it with $(word);
no spaces in paths)."""

import sys
import sysconfig


def main() -> None:
    print(f"{sys.version_info[0]}.{sys.version_info[1]}", sysconfig.get_paths()["include"])


if __name__ == "__main__":
    main()
