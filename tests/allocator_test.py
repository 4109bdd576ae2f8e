import ctypes.util
import platform

import pytest

from auto_deeplab_tf import allocator


def test_refuses_a_cap_below_one():
    with pytest.raises(ValueError) as e:
        allocator.limit_malloc_arenas(0)
    assert str(e.value) == "max_arenas must be >= 1, got 0"


def test_leaves_a_user_set_malloc_arena_max_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.limit_malloc_arenas(1) is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the cap is a glibc mallopt")
def test_sets_the_cap_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert ctypes.util.find_library("c")
    # A cap at glibc's own default ceiling keeps the test process's behaviour unchanged.
    assert allocator.limit_malloc_arenas(8 * 64) is True

