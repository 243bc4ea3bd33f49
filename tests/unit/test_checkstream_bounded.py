"""checkstream's memory of the alert ids it has seen is bounded (issue 21, item 8)."""

from fink.ops.checkstream import RecentIds


def test_recent_ids_catch_recent_repeats_and_forget_old_ones_within_their_bound():
    seen = RecentIds(limit=1000)
    for i in range(10_000):
        assert i not in seen
        seen.add(i)
        assert len(seen) <= 2000  # before, a set of every id ever seen: 10,000 here, a night's worth live
    assert all(i in seen for i in range(9_000, 10_000))  # the last `limit` ids: always remembered
    assert 0 not in seen  # long gone
    seen.add("ZTF-like string id")
    assert "ZTF-like string id" in seen and "another" not in seen

