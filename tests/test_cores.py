"""The cores a process may use: its cgroups' CPU quota caps what the host's core count would say."""

import os

import pytest

from xai.cores import quota_cores, usable_cores


def member(tmp_path, *lines):
    """A /proc/self/cgroup-like file naming this process's cgroups."""
    path = tmp_path / "self-cgroup"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_cgroup_v2_quota_caps_the_cores(tmp_path):
    tree, own = tmp_path / "cg", member(tmp_path, "0::/")
    tree.mkdir()
    (tree / "cpu.max").write_text("200000 100000\n")  # two cores' worth of time per period
    assert quota_cores(tree, own) == 2
    (tree / "cpu.max").write_text("150000 100000\n")  # one and a half: two threads can use it
    assert quota_cores(tree, own) == 2
    (tree / "cpu.max").write_text("50000 100000\n")
    assert quota_cores(tree, own) == 1
    assert usable_cores(tree, own) == 1  # whatever the host has
    (tree / "cpu.max").write_text("100000000 100000\n")  # a thousand cores: the affinity decides
    assert usable_cores(tree, own) == len(os.sched_getaffinity(0))


def test_the_tightest_quota_on_the_way_up_from_the_process_s_own_cgroup(tmp_path):
    tree = tmp_path / "cg"
    own = tree / "kubepods" / "pod1" / "box"
    own.mkdir(parents=True)
    (own / "cpu.max").write_text("max 100000\n")  # the container sets none, its pod does
    (own.parent / "cpu.max").write_text("300000 100000\n")
    (tree / "cpu.max").write_text("max 100000\n")
    assert quota_cores(tree, member(tmp_path, "0::/kubepods/pod1/box")) == 3
    (own / "cpu.max").write_text("100000 100000\n")
    assert quota_cores(tree, member(tmp_path, "0::/kubepods/pod1/box")) == 1
    assert quota_cores(tree, member(tmp_path, "0::/elsewhere")) is None  # a cgroup whose folders hold none


def test_a_cgroup_v1_quota_and_no_quota(tmp_path):
    tree = tmp_path / "cg"
    own = tree / "cpu,cpuacct" / "docker" / "abc"
    own.mkdir(parents=True)
    (own / "cpu.cfs_quota_us").write_text("300000\n")
    (own / "cpu.cfs_period_us").write_text("100000\n")
    membership = member(tmp_path, "7:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc")
    assert quota_cores(tree, membership) == 3
    (own / "cpu.cfs_quota_us").write_text("-1\n")
    assert quota_cores(tree, membership) is None
    assert usable_cores(tree, membership) == len(os.sched_getaffinity(0))  # no quota: the affinity decides


@pytest.mark.parametrize("text", ["abc 100000", "100000 0", "100000", "", "-5 100000"])
def test_an_unreadable_quota_is_no_quota(tmp_path, text):
    (tmp_path / "cpu.max").write_text(text)
    assert quota_cores(tmp_path, tmp_path / "missing") is None


def test_without_affinity_the_os_count_is_capped_too(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert usable_cores(tmp_path, tmp_path / "missing") == 32
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert usable_cores(tmp_path, tmp_path / "missing") == 2
