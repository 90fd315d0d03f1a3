import pytest

from radixrt.cache import PageAllocator


def test_alloc_and_free_round_trip():
    a = PageAllocator(8)
    pages = a.alloc(5)
    assert sorted(pages.tolist()) == [0, 1, 2, 3, 4]
    assert a.available() == 3 and a.used() == 5
    a.free(pages[:2])
    assert a.available() == 5
    again = a.alloc(5)
    assert len(set(again.tolist()) | set(pages[2:].tolist())) == 8


def test_alloc_more_than_available_takes_nothing():
    a = PageAllocator(4)
    a.alloc(3)
    assert a.alloc(2) is None
    assert a.available() == 1
    assert a.alloc(0).size == 0


def test_negative_alloc_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        PageAllocator(4).alloc(-1)


def test_pool_needs_a_page():
    with pytest.raises(ValueError, match="at least one page"):
        PageAllocator(0)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([7, 8], "page id 8 does not belong"),
        ([-1], "page id -1 does not belong"),
        ([5, 5], "appear twice"),
        ([6], "already free"),
    ],
)
def test_bad_free_raises_and_changes_nothing(bad, message):
    a = PageAllocator(8)
    a.alloc(6)
    with pytest.raises(ValueError, match=message):
        a.free(bad)
    assert a.available() == 2
    assert not a.is_free(5)


def test_double_free_after_reuse_is_caught():
    a = PageAllocator(2)
    p = a.alloc(1)
    a.free(p)
    with pytest.raises(ValueError, match="double free"):
        a.free(p)


def test_reset_frees_everything():
    a = PageAllocator(4)
    a.alloc(4)
    a.reset()
    assert a.available() == 4


def test_a_fresh_pool_hands_out_consecutive_runs():
    a = PageAllocator(10)
    assert a.alloc(3).tolist() == [0, 1, 2] and a.alloc(2).tolist() == [3, 4]
    a.free([1, 0])
    assert a.alloc(3).tolist() == [0, 1, 5]  # the freed pages come back first
