"""The cores a process may use: a container's CPU quota caps what the host's core count would say."""

import os

from xai.cores import quota_cores, usable_cores


def test_a_cgroup_v2_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("200000 100000\n")  # two cores' worth of time per period
    assert quota_cores(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # one and a half: two threads can use it
    assert quota_cores(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert quota_cores(tmp_path) == 1
    assert usable_cores(tmp_path) == 1  # whatever the host has


def test_a_cgroup_v1_quota_and_no_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cores(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert quota_cores(tmp_path) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota_cores(tmp_path) is None
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))  # no quota: the affinity decides


def test_an_unreadable_or_missing_cgroup_is_no_quota(tmp_path):
    assert quota_cores(tmp_path / "missing") is None
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert quota_cores(tmp_path) is None
    assert usable_cores(tmp_path) >= 1
