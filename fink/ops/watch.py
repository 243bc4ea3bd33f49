"""``fink watchlist add|list|remove``: users' watchlists, registered while the stream runs.

Registering a list stores it (:mod:`fink.filters.watchlists`), creates its topic and the
topic's ``_schema`` topic, and grants them to the owner when the owner is a user of the
broker (``fink users add``); the running distribution stage reads the change at its next
micro-batch. The same calls serve a notebook: :func:`register`, :func:`unregister`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fink.config import ServicesConfig
from fink.filters import watchlists as wl
from fink.io import access, kafka

#: the owner of a list registered without --user (the operator's; no grant)
OPERATOR = "fink"


def register(name: str, rows: Any, user: str = OPERATOR, *, replace: bool = False,
             radius_arcsec: float = wl.DEFAULT_RADIUS, root: str | None = None,
             bootstrap: str | None = None, partitions: int = 1) -> dict[str, Any]:
    """Store ``user``'s watchlist ``name`` (``rows``: a CSV path, a table or records), create its
    topic and grant it to ``user`` when the broker knows them. Returns what was done."""
    entries = wl.read_csv(rows, radius_arcsec) if isinstance(rows, (str, Path)) else rows
    stored = wl.add(name, entries, user, replace=replace, radius_arcsec=radius_arcsec, root=root)
    bootstrap = bootstrap or ServicesConfig.load().kafka_bootstrap
    kafka.ensure_topic(bootstrap, stored.topic, partitions)
    kafka.ensure_topic(bootstrap, f"{stored.topic}_schema", 1, config={"cleanup.policy": "compact"})
    granted = user in access.users(bootstrap)
    if granted:
        access.grant(bootstrap, user, stored.topic)
    return {"user": user, "watchlist": name, "topic": stored.topic, "entries": len(stored.entries),
            "granted": granted, "version": wl.version(root)}


def unregister(name: str, user: str = OPERATOR, entry_names: list[str] | None = None,
               root: str | None = None) -> dict[str, Any]:
    """Remove ``user``'s list ``name`` (or only its entries ``entry_names``). Its topic stays, with
    what it received, until its retention ends."""
    left = wl.remove(name, user, entry_names, root=root)
    return {"user": user, "watchlist": name, "topic": wl.topic_of(user, name),
            "entries": 0 if left is None else len(left.entries), "version": wl.version(root)}


def listing(user: str | None = None, root: str | None = None) -> list[dict[str, Any]]:
    """Every list (``user``'s only, if given): owner, name, topic, entries by kind."""
    return [{"user": w.user, "watchlist": w.name, "topic": w.topic, "entries": len(w.entries),
             "positions": int(w.entries["ra"].notna().sum()), "object_ids": int(w.entries["object_id"].notna().sum())}
            for w in wl.load(root, user)]


def add_parser(sub: Any) -> None:
    """The ``watchlist`` command's arguments, under the ``fink`` parser's subcommands ``sub``."""
    w = sub.add_parser("watchlist", help="users' watchlists: alerts near their positions to their own topic")
    wsub = w.add_subparsers(dest="watchlist_command", required=True)
    a = wsub.add_parser("add", help="register a list, or add entries to it (from a CSV: name, ra, dec, "
                        "radius_arcsec, object_id)")
    a.add_argument("name")
    a.add_argument("csv", help="CSV file with a header")
    a.add_argument("--user", default=OPERATOR, help=f"owner (granted its topic); default {OPERATOR}")
    a.add_argument("--radius", type=float, default=wl.DEFAULT_RADIUS, help="arcseconds, where a row gives none")
    a.add_argument("--replace", action="store_true", help="replace the list's entries instead of adding to them")
    a.add_argument("--registry", default=None, help="registry folder (default $FINK_HOME/watchlists)")
    ls = wsub.add_parser("list", help="the registered lists")
    ls.add_argument("--user", default=None)
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--registry", default=None)
    r = wsub.add_parser("remove", help="remove a list, or some of its entries")
    r.add_argument("name")
    r.add_argument("--user", default=OPERATOR)
    r.add_argument("--entry", action="append", default=None, help="an entry's name (repeatable); default: the list")
    r.add_argument("--registry", default=None)


def command(args: argparse.Namespace) -> int:
    """Run ``fink watchlist ...``."""
    if args.watchlist_command == "add":
        done = register(args.name, args.csv, args.user, replace=args.replace, radius_arcsec=args.radius,
                        root=args.registry)
        grant = f"granted to {done['user']}" if done["granted"] else f"not granted: {done['user']} is no user of " \
            "the broker (fink users add)"
        print(f"watchlist {done['user']}/{done['watchlist']}: {done['entries']} entries -> topic {done['topic']} "
              f"({grant}); version {done['version']}, used from the next micro-batch")
    elif args.watchlist_command == "remove":
        done = unregister(args.name, args.user, args.entry, root=args.registry)
        print(f"watchlist {done['user']}/{done['watchlist']}: "
              + (f"{done['entries']} entries left" if done["entries"] else "removed")
              + f"; version {done['version']}, used from the next micro-batch")
    else:
        found = listing(args.user, args.registry)
        if args.json:
            print(json.dumps(found, indent=1))
        elif not found:
            print("no watchlist")
        for w in [] if args.json else found:
            print(f"{w['user'] + '/' + w['watchlist']:32s} {w['entries']:7d} entries ({w['positions']} positions, "
                  f"{w['object_ids']} object ids) -> {w['topic']}")
    return 0
