"""resources: the limits come from the container (fake cgroup trees in tmp_path), not from the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_lab.runtime import resources

GIB = 2**30
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 writes for "no limit" (LONG_MAX rounded down to a page)


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


@pytest.fixture
def big_host(monkeypatch):
    """A host with far more RAM (64 GiB, 48 GiB free) than any container limit below, and 8 cores."""
    monkeypatch.setattr(resources, "physical_memory", lambda: 64 * GIB)
    monkeypatch.setattr(resources, "_meminfo_available", lambda: 48 * GIB)
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda _pid: set(range(8)))


def test_v2_memory_limit_and_usage(tmp_path, big_host):
    root = tree(tmp_path, {"memory.max": str(2 * GIB), "memory.current": str(GIB // 2)})
    assert resources.cgroup_memory_limit(root) == 2 * GIB
    assert resources.memory_limit(root) == 2 * GIB  # not the host's 64 GiB
    assert resources.memory_available(root) == 2 * GIB - GIB // 2  # not the host's 48 GiB free


def test_v2_max_means_no_limit(tmp_path, big_host):
    root = tree(tmp_path, {"memory.max": "max", "memory.current": str(GIB)})
    assert resources.cgroup_memory_limit(root) is None
    assert resources.memory_limit(root) == 64 * GIB
    assert resources.memory_available(root) == 48 * GIB


def test_v1_limit_and_its_unlimited_value(tmp_path, big_host):
    root = tree(tmp_path, {"memory/memory.limit_in_bytes": str(3 * GIB), "memory/memory.usage_in_bytes": str(GIB)})
    assert resources.cgroup_memory_limit(root) == 3 * GIB
    assert resources.memory_available(root) == 2 * GIB
    unlimited = tree(tmp_path / "u", {"memory/memory.limit_in_bytes": V1_UNLIMITED})
    assert resources.cgroup_memory_limit(unlimited) is None  # a huge number is "no limit", not 8 EiB of RAM
    assert resources.memory_limit(unlimited) == 64 * GIB


def test_no_cgroup_files_fall_back_to_the_host(tmp_path, big_host):
    assert resources.cgroup_memory_limit(tmp_path) is None
    assert resources.memory_limit(tmp_path) == 64 * GIB
    assert resources.memory_available(tmp_path) == 48 * GIB
    assert resources.cpu_count(tmp_path) == 8


def test_usage_above_the_limit_leaves_nothing(tmp_path, big_host):
    root = tree(tmp_path, {"memory.max": str(GIB), "memory.current": str(GIB + 4096)})
    assert resources.memory_available(root) == 0


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "max 100000"}, 8),
    ({"cpu.max": "200000 100000"}, 2),
    ({"cpu.max": "150000 100000"}, 2),  # 1.5 CPUs of quota: two threads can use it
    ({"cpu.max": "50000 100000"}, 1),
    ({"cpu.max": "1600000 100000"}, 8),  # a quota above the affinity mask does not add cores
    ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 8),  # v1: no quota
])
def test_cpu_quota(tmp_path, big_host, files, cores):
    assert resources.cpu_count(tree(tmp_path, files)) == cores


def test_module_root_is_read_at_call_time(tmp_path, big_host, monkeypatch):
    """The app calls these without a root: pointing `CGROUP` at a tree is what a container's limit looks like."""
    monkeypatch.setattr(resources, "CGROUP", tree(tmp_path, {"memory.max": str(GIB), "memory.current": "0",
                                                              "cpu.max": "100000 100000"}))
    assert resources.memory_limit() == GIB and resources.memory_available() == GIB and resources.cpu_count() == 1


def test_research_budget_follows_the_container(tmp_path, big_host, monkeypatch):
    """The research tab's memory budget is a share of what the container has left, not of the host's RAM."""
    from resnet_lab.ui import research

    monkeypatch.setattr(resources, "CGROUP", tree(tmp_path, {"memory.max": str(4 * GIB),
                                                              "memory.current": str(GIB)}))
    assert research.memory_budget() == int(3 * GIB * research.MEMORY_SHARE)
