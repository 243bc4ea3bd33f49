"""Which of Fink's community science modules and filters run here, and why the others do not.

Tries every ZTF module of ``fink-science`` (each ``processor`` and each Spark UDF in it) and
every livestream filter of ``fink-filters`` on the 31 Fink-distributed alerts of
``../shared/datasim/ztf/fink-client_datatest/ztf/part-3-305711.avro`` (they carry Fink's own
values), without Spark, and writes the tables into ``docs/fink.md`` between its markers::

    .venv/bin/python tools/fink_table.py [--datasim ../shared/datasim] [--check]

A module with an adapter (:data:`fink.science.community_modules.CALLS`) runs as the stream runs it and
its outputs are compared with Fink's stored values; one without is called with the alerts'
columns named after its parameters, and what stops it is its row's reason. A filter is
resolved as the distribution stage resolves it, twice: against the columns Fink distributed
(with Fink's module outputs) and against this broker's own columns (the built-in modules and
the ``fink:`` modules that run here, the survey's ``fink_names``). ``--check`` exits 1 when
``docs/fink.md`` differs from what this run measured.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from fink.filters.community_filters import FilterAdapter, bind, livestream, resolve
from fink.filters.filter_api import FilterError, load_filters
from fink.science import alert_columns
from fink.science import community_modules as community
from fink.science.science_api import load_module, load_modules, run_module
from fink.survey import avro as survey_avro
from fink.survey.description import load as load_survey

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "fink.md"
START, END = "<!-- fink_table:start -->", "<!-- fink_table:end -->"
ALERTS = "ztf/fink-client_datatest/ztf/part-3-305711.avro"
#: outputs whose Fink values are random (``magnitude_rate`` samples with ``seed=None``)
RANDOM = {"mag_rate", "sigma_rate", "lower_rate", "upper_rate"}


def reason(exc: BaseException | str) -> str:
    """The first line of what stopped it (the innermost cause), its install paths shortened."""
    if isinstance(exc, BaseException):
        while exc.__cause__ is not None:
            exc = exc.__cause__
        exc = f"{type(exc).__name__}: {exc}"
    text = exc.splitlines()[0]
    for package in ("fink_science", "fink_filters"):  # where the virtualenv put them: not the point
        text = text.replace(str(Path(importlib.import_module(package).__file__).parent), package)
    return text[:160].replace("|", "\\|")


def compare(out, alerts: list[dict], column: str) -> str:
    """How the adapter's ``column`` compares with Fink's stored values of the alerts."""
    if column not in alerts[0]:
        return "(Fink's alerts do not carry it)"
    ours, theirs = list(out[column]), [a[column] for a in alerts]
    if column in RANDOM:
        sigma = [a["sigma_rate"] for a in alerts]
        nans = sum((x is None or x != x) == (y is None or y != y) for x, y in zip(ours, theirs, strict=True))
        close = sum(1 for x, y, s in zip(ours, theirs, sigma, strict=True)
                    if x is not None and y is not None and x == x and y == y and s and abs(x - y) <= 2 * s)
        finite = sum(1 for y in theirs if y is not None and y == y)
        return f"random in Fink (seed None): missing where Fink's is {nans}/{len(alerts)}, within 2 σ {close}/{finite}"
    equal = sum(community.same_value(x, y) for x, y in zip(ours, theirs, strict=True))
    return f"equal to Fink's {equal}/{len(alerts)}"


def fink_columns(alerts: list[dict], schema: dict, arg: str) -> Any:
    """A parameter's column, found the way Fink finds it (a ``c<field>`` array, or by name)."""
    field = community.c_field(arg)
    if field:
        prv, cur = alert_columns.alert_series(alerts, community.history_paths(field), schema)
        return community.concat(prv, cur)
    names = alert_columns.avro_names(schema)
    path = resolve(arg, names)
    return alert_columns.alert_series(alerts, [path], schema)[0]


def known_udfs(package: str = "fink_science.ztf") -> list[tuple[str, str | None, list[str]]]:
    """Every ``processor`` module under ``package``: (module path, import error or None, the
    names of the Spark UDFs it defines)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
            modname = f"{package}.{info.name}.processor"
            try:
                mod = importlib.import_module(modname)
            except Exception as exc:  # the reason it does not run here
                out.append((modname, f"{type(exc).__name__}: {exc}", []))
                continue
            udfs = [k for k, v in vars(mod).items() if callable(getattr(v, "func", None))
                    and getattr(v, "evalType", None) is not None and getattr(v.func, "__module__", "") == modname]
            out.append((modname, None, udfs))
    return out


def science_rows(alerts: list[dict], schema: dict) -> list[str]:
    rows = []
    by_udf: dict[str, list[str]] = {}
    inside: dict[str, str] = {}  # a UDF whose value Fink uses only as another's argument
    for name, call in community.CALLS.items():
        by_udf.setdefault(call.udf, []).append(name)
        inside.update({a.udf: name for a in call.args if isinstance(a, community.Via)})
    for modname, error, udfs in known_udfs():
        short = modname.removeprefix("fink_science.ztf.").removesuffix(".processor")
        if error:
            rows.append(f"| `{short}` | | no | cannot be imported here: {reason(error)} |")
            continue
        for attr in udfs:
            path = f"{modname}:{attr}"
            for name in by_udf.get(path, []):
                module = load_module(f"fink:{name}")
                out = run_module(module, alert_columns.alert_series(alerts, module.inputs, schema))
                if out["_error"].notna().any():
                    rows.append(f"| `{short}:{attr}` | `fink:{name}` | no | {out['_error'].iloc[0]} |")
                    continue
                figures = "; ".join(f"`{c}` {compare(out, alerts, c)}" for c in module.outputs)
                rows.append(f"| `{short}:{attr}` | `fink:{name}` | **yes** | {figures} |")
            if path in by_udf:
                continue
            if path in inside:
                rows.append(f"| `{short}:{attr}` | in `fink:{inside[path]}` | **yes** | Fink keeps none of its "
                            f"values: they are an argument of `fink:{inside[path]}` |")
                continue
            udf = getattr(importlib.import_module(modname), attr)
            try:
                args = [fink_columns(alerts, schema, a) for a in community.fink_udf_args(udf.func)]
                with community.quiet():
                    udf.func(*args)
                why = "runs on Fink's stored columns, but Fink feeds it values this broker does not compute"
            except FilterError as exc:  # a parameter that names no column of the alerts
                why = f"needs a column Fink's alerts do not carry: {exc}"
            except Exception as exc:  # what stops it: the reason of its row
                why = reason(exc)
            rows.append(f"| `{short}:{attr}` | | no | {why} |")
    return rows


def filter_rows(alerts: list[dict], schema: dict) -> list[str]:
    fink_names = load_survey("ztf").fink_columns()
    theirs = alert_columns.avro_names(schema)
    ours = ours_names()
    rows = []
    for topic, path in livestream().items():
        name = community.split_path(path)[1]
        try:
            loaded = load_filters({topic: path})[0]
        except FilterError as exc:
            why = reason(exc)
            rows.append(f"| `{name}` | `{topic}` | no: {why} | no: {why} |")
            continue
        try:
            bound = bind(loaded, theirs, lambda p: alert_columns.avro_has(schema, p), {})
            adapter: FilterAdapter = bound.module.func
            selected = int(np.sum(adapter(*alert_columns.alert_series(alerts, bound.module.inputs, schema))))
            on_fink = f"yes: selects {selected} of {len(alerts)}"
        except FilterError as exc:
            on_fink = f"no: {str(exc).split('argument ', 1)[-1].split(';')[0]}"
        except Exception as exc:  # what stops it on Fink's own columns
            on_fink = f"no: {reason(exc)}"
        try:
            bind(loaded, ours[0], ours[1], fink_names)
            here = "**yes**"
        except FilterError as exc:
            here = f"no: {str(exc).split('argument ', 1)[-1].split(';')[0]}"
        rows.append(f"| `{name}` | `{topic}` | {on_fink} | {here} |")
    return rows


def ours_names() -> tuple[list[str], Any]:
    """The flattened columns of this broker's ZTF science alerts with every ``fink:`` module
    that runs here, and a test of a dotted path."""
    schema = survey_avro.load_schema("4.02")
    names = alert_columns.avro_names(schema)
    modules = load_modules([*load_survey("ztf").modules, *[f"fink:{n}" for n in community.CALLS if n != "roid"]])
    for m in modules:
        for column, dtype in m.outputs.items():
            names.append(column)
            if dtype.startswith("struct<"):
                names += [f"{column}.{f.split(':')[0]}" for f in dtype[len("struct<"):-1].split(",")]
    return names, lambda p: alert_columns.avro_has(schema, p) or p in names


def render(datasim: Path) -> str:
    with open(datasim / ALERTS, "rb") as f:
        reader = fastavro.reader(f)
        schema, alerts = reader.writer_schema, list(reader)
    versions = {p: community._version(p) for p in ("fink_science", "fink_filters", "fink_utils")}
    lines = [
        f"Measured by `tools/fink_table.py` with fink-science {versions['fink_science']}, fink-filters "
        f"{versions['fink_filters']} and fink-utils {versions['fink_utils']} on the {len(alerts)} alerts Fink "
        f"distributed in `{ALERTS}` (Fink computed their values with fink-science "
        f"{alerts[0].get('fink_science_version', '?')}).",
        "",
        "### Science modules (`fink_science.ztf`)",
        "",
        "| module:UDF | name here | runs here | Fink's values reproduced, or why it does not run |",
        "|---|---|---|---|",
        *science_rows(alerts, schema),
        "",
        "### Livestream filters (`fink_filters.ztf.livestream`)",
        "",
        "| filter | topic | on the columns Fink distributed | on this broker's columns |",
        "|---|---|---|---|",
        *filter_rows(alerts, schema),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasim", type=Path, default=ROOT.parent / "shared" / "datasim")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/fink.md is not what this run measured")
    args = parser.parse_args(argv)
    socket.setdefaulttimeout(5)  # a module that calls a web service fails quickly here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = render(args.datasim)
    doc = DOC.read_text()
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    new = f"{head}{START}\n{table}\n{END}{tail}"
    if args.check:
        if new != doc:
            print("docs/fink.md differs from what tools/fink_table.py measured; run it", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

