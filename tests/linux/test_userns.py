"""The user namespace a session without root runs in (tests/support/userns.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.support import userns


def test_subordinate_ids_are_read_by_name_or_uid(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n1001:200000:1000\nbroken line\n")
    assert userns._subids(str(subuid), "alice", 1000) == (100000, 65536)
    assert userns._subids(str(subuid), "bob", 1001) == (200000, 1000)
    assert userns._subids(str(subuid), "carol", 1002) is None
    assert userns._subids(str(tmp_path / "missing"), "alice", 1000) is None


def test_the_host_maps_every_uid() -> None:
    if userns.in_user_namespace():
        pytest.skip("this session runs in a user namespace")
    assert userns.uid_mapped(0) and userns.uid_mapped(65534)


def test_a_session_in_a_user_namespace_is_root_with_its_own_root_and_tmpdir() -> None:
    if userns.entered is None:
        pytest.skip("this session did not enter a user namespace (root, or IPSEC_TEST_USERNS=0)")
    assert os.geteuid() == 0 and userns.in_user_namespace()
    assert userns.uid_mapped(65534) and not userns.uid_mapped(65536)
    assert os.stat("/").st_uid == 0  # ipsecd's path checks walk up to /
    assert tempfile.gettempdir() == userns.TMPDIR == os.environ["TMPDIR"]
    assert Path("/run/netns").is_dir() and os.stat("/run").st_uid == 0
