"""The watchlist registry and its matching, against astropy's separations (no Spark, no broker)."""

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from fink.filters import watchlists as wl
from fink.ops import cli


def sky(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def expected(lists, ra, dec, oids):
    """Per (alert, list): the entry astropy finds nearest within its radius (an object id first)."""
    out = {}
    alerts = SkyCoord(ra * u.deg, dec * u.deg)
    for k, table in enumerate(lists):
        placed = table[table["ra"].notna()]
        for row, oid in enumerate(oids):
            ids = table[table["object_id"] == oid] if oid is not None else table.iloc[:0]
            if len(ids):
                out[(row, k)] = (ids["name"].iloc[0], None)
                continue
            if placed.empty:
                continue
            sep = alerts[row].separation(SkyCoord(placed["ra"].to_numpy() * u.deg,
                                                  placed["dec"].to_numpy() * u.deg)).arcsec
            inside = sep <= placed["radius_arcsec"].to_numpy()
            if inside.any():
                best = int(np.argmin(np.where(inside, sep, np.inf)))
                out[(row, k)] = (placed["name"].iloc[best], sep[best])
    return out


def test_matches_equal_astropys_nearest_entry_per_list(tmp_path):
    ra, dec = sky(400, 1)
    near_ra, near_dec = ra[:60] + np.random.default_rng(2).normal(0, 1.5 / 3600, 60), dec[:60]
    a = pd.DataFrame({"name": [f"a{i}" for i in range(60)], "ra": near_ra % 360, "dec": near_dec,
                      "radius_arcsec": np.linspace(0.5, 6, 60)})
    b = pd.DataFrame({"name": ["b0", "b1", "b2"], "ra": [ra[5], None, ra[7] + 2e-4],
                      "dec": [dec[5], None, dec[7]], "object_id": [None, "ZTF19x", None]})
    wl.add("a", a, "alice", root=tmp_path)
    wl.add("b", b, "bob", radius_arcsec=3, root=tmp_path)
    lists = wl.load(tmp_path)
    assert [w.topic for w in lists] == ["watchlist_alice_a", "watchlist_bob_b"]
    oids = [None] * 400
    oids[9] = oids[5] = "ZTF19x"
    got = wl.match(wl.index(lists, wl.version(tmp_path)), ra, dec, oids)
    want = expected([w.entries for w in lists], ra, dec, oids)
    assert {(r, k) for r, k in zip(got["alert"], got["list"], strict=True)} == set(want)
    for row, k, entry, sep in got.itertuples(index=False):
        assert want[(row, k)][0] == entry
        if want[(row, k)][1] is None:
            assert np.isnan(sep)
        else:
            assert sep == pytest.approx(want[(row, k)][1], abs=1e-6)
    assert (got["list"] == 1).sum() >= 2 and (got["list"] == 0).sum() >= 30


def test_updates_bump_the_version_and_change_the_matches(tmp_path):
    assert wl.version(tmp_path) == 0 and wl.load(tmp_path) == []
    wl.add("l", [{"name": "x", "ra": 10.0, "dec": 20.0}], "carol", root=tmp_path)
    wl.add("l", [{"name": "y", "ra": 11.0, "dec": 20.0}, {"name": "x", "ra": 12.0, "dec": 20.0}], "carol",
           root=tmp_path)
    (stored,) = wl.load(tmp_path)
    assert wl.version(tmp_path) == 2 and sorted(stored.entries["name"]) == ["x", "y"]
    assert stored.entries.set_index("name").loc["x", "ra"] == 12.0  # a name given again replaces its entry
    idx = wl.index(wl.load(tmp_path), wl.version(tmp_path))
    assert list(wl.match(idx, [12.0, 10.0], [20.0, 20.0])["entry"]) == ["x"]
    wl.remove("l", "carol", ["x"], root=tmp_path)
    idx = wl.index(wl.load(tmp_path), wl.version(tmp_path))
    assert wl.match(idx, [12.0], [20.0]).empty and len(wl.match(idx, [11.0], [20.0])) == 1
    wl.remove("l", "carol", root=tmp_path)
    assert wl.load(tmp_path) == [] and wl.version(tmp_path) == 4
    with pytest.raises(wl.WatchlistError, match="no watchlist 'l' of user 'carol'"):
        wl.remove("l", "carol", root=tmp_path)


@pytest.mark.parametrize(("text", "error"), [
    ("name,ra,dec\nm31,10.68,41.27\nbad,400,1\n", "line 3 \\(bad\\): ra outside"),
    ("name,ra,dec\nm31,10.68,\n", "line 2 \\(m31\\): ra without dec"),
    ("name,ra,dec,object_id\nm31,,,\n", "line 2 \\(m31\\): neither a position"),
    ("name,ra\nm31,10.68\n", "ra without dec"),
    ("name,ra,dec\nm31,ten,41\n", "ra or dec is not a number"),
    ("name,ra,dec,radius_arcsec\nm31,10,41,7200\n", "radius_arcsec outside"),
    ("ra,dec\n10,41\n", "no 'name' column"),
    ("name,ra,dec,colour\nm31,10,41,red\n", "unknown column 'colour'"),
    ("name,ra,dec\n", "no entry"),
])
def test_a_bad_csv_is_refused_naming_its_line(tmp_path, text, error):
    path = tmp_path / "list.csv"
    path.write_text(text)
    with pytest.raises(wl.WatchlistError, match=error):
        wl.read_csv(path)
    assert wl.version(tmp_path / "registry") == 0


def test_names_that_would_make_bad_topics_or_paths_are_refused(tmp_path):
    for user, name in [("../x", "l"), ("a", "b/c"), ("a", ""), ("a b", "l")]:
        with pytest.raises(wl.WatchlistError, match="name"):
            wl.add(name, [{"name": "x", "ra": 1.0, "dec": 1.0}], user, root=tmp_path)
    assert not list(tmp_path.rglob("*.parquet"))


def test_the_command_adds_lists_and_removes(tmp_path, capsys, monkeypatch):
    csv = tmp_path / "mine.csv"
    csv.write_text("name,ra,dec,radius_arcsec,object_id\nsn1,10.5,-3.25,2,\nfriend,,,,ZTF21abc\n")
    registry = str(tmp_path / "reg")
    monkeypatch.setattr("fink.ops.watch.register", lambda name, rows, user, **kw: {
        "user": user, "watchlist": name, "topic": wl.topic_of(user, name), "granted": False,
        "entries": len(wl.add(name, wl.read_csv(rows), user, root=kw["root"]).entries), "version": 1})
    assert cli.main(["watchlist", "add", "mine", str(csv), "--user", "dana", "--registry", registry]) == 0
    assert "2 entries -> topic watchlist_dana_mine (not granted" in capsys.readouterr().out
    assert cli.main(["watchlist", "list", "--registry", registry]) == 0
    assert "dana/mine" in capsys.readouterr().out
    assert cli.main(["watchlist", "remove", "mine", "--user", "dana", "--entry", "sn1", "--registry", registry]) == 0
    assert "1 entries left" in capsys.readouterr().out
    assert cli.main(["watchlist", "remove", "mine", "--user", "dana", "--entry", "nope", "--registry", registry]) == 1
    assert "no entry 'nope'" in capsys.readouterr().err
