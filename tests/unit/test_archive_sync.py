"""The archive's group commit: one syncfs() serves every archive that finished writing before it
started; a failed sync counts for nobody; the fsync fallback writes the same archive."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

import pytest

from controller import archive as archive_mod
from controller.archive import Archive, GroupSync


class CountingSync(GroupSync):
    def __init__(self, root, delay: float = 0.02, fail: int = 0):
        super().__init__(root)
        self.calls: list[tuple[float, float]] = []     # (start, end) of each sync
        self.delay = delay
        self.fail = fail

    def _syncfs(self) -> None:
        start = time.monotonic()
        time.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise OSError(5, "injected")
        self.calls.append((start, time.monotonic()))


def test_one_sync_serves_many_callers_and_each_waits_for_a_sync_started_after_it(tmp_path):
    sync = CountingSync(tmp_path)
    returned: list[tuple[float, float]] = []

    def caller() -> None:
        asked = time.monotonic()
        sync.wait_durable()
        returned.append((asked, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(returned) == 32
    assert len(sync.calls) < 32 / 2                     # shared, not one each
    for asked, back in returned:                        # a sync that began after the call ended before return
        assert any(asked <= start and end <= back for start, end in sync.calls)


def test_a_failed_sync_counts_for_nobody(tmp_path):
    sync = CountingSync(tmp_path, fail=1)
    with pytest.raises(OSError):
        sync.wait_durable()
    sync.wait_durable()                                 # the next caller runs its own, successful sync
    assert len(sync.calls) == 1


@pytest.mark.skipif(archive_mod._LIBC is None, reason="no syncfs here")
def test_real_syncfs(tmp_path):
    GroupSync(tmp_path).wait_durable()


@pytest.mark.parametrize("group_sync", [True, False])
def test_archive_is_the_same_with_group_commit_or_fsync(tmp_path, group_sync):
    uid = str(uuid.uuid4())
    arch = Archive(tmp_path, group_sync=group_sync)
    final = arch.agent_dir("ns", "a1", uid)
    pending = arch.begin(final)
    pending.open("agent.log").write(b"line\n")
    pending.write_file("agent.json", b"{}")
    result = pending.commit()
    assert sorted(os.listdir(final)) == ["MANIFEST.json", "agent.json", "agent.log"]
    assert [f["name"] for f in json.loads((final / "MANIFEST.json").read_text())["files"]] == ["agent.json",
                                                                                                "agent.log"]
    assert not result.already_existed
