from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostlib import Host, build_testhost


@pytest.fixture(scope="session")
def testhost_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_testhost(tmp_path_factory.mktemp("testhost"))


@pytest.fixture
def host(testhost_exe: Path) -> Iterator[Host]:
    h = Host(testhost_exe)
    yield h
    last = h.close()
    assert last == "exit tasks=0 queues=0", f"leaked at exit: {last}\n{h.stderr}"
