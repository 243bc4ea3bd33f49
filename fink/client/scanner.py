"""An ipywidgets scanner: step through alerts (previous / next), look, save the good ones."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from fink.client.plots import plot_alert, show_figures


def save_alert(alert: dict[str, Any], folder: str | Path, schema: dict[str, Any] | None = None) -> Path:
    """Write ``alert`` to ``folder``: ``<candid>.avro`` (an Avro container) with ``schema``, else JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if schema is not None:
        import fastavro

        path = folder / f"{alert['candid']}.avro"
        buf = io.BytesIO()
        fastavro.writer(buf, fastavro.parse_schema(schema), [alert])
        path.write_bytes(buf.getvalue())
        return path
    path = folder / f"{alert['candid']}.json"
    path.write_text(json.dumps(alert, default=lambda o: o.hex() if isinstance(o, bytes) else str(o)))
    return path


class Scanner:
    """Previous / Next / Save over a list of alerts, each drawn with :func:`plot_alert`.

    ``display(Scanner(alerts, "saved").widget)`` in a notebook; the methods ``next``,
    ``previous`` and ``save`` are what the buttons call, so they can be scripted too.
    """

    def __init__(self, alerts: list[dict[str, Any]], save_to: str | Path, schema: dict[str, Any] | None = None):
        import ipywidgets as w

        self.alerts, self.save_to, self.schema = list(alerts), Path(save_to), schema
        self.index = 0
        self.saved: list[Path] = []
        self.out = w.Output()
        self.label = w.HTML()
        buttons = [w.Button(description=d, icon=i) for d, i in
                   (("Previous", "arrow-left"), ("Next", "arrow-right"), ("Save", "save"))]
        for b, fn in zip(buttons, (self.previous, self.next, self.save), strict=True):
            b.on_click(lambda _b, fn=fn: fn())
        self.widget = w.VBox([w.HBox([*buttons, self.label]), self.out])
        self.show()

    def show(self) -> None:
        if not self.alerts:
            self.label.value = "no alerts"
            show_figures(self.out, [])
            return
        alert = self.alerts[self.index]
        extra = {k: alert.get(k) for k in ("snia_prob", "cdsxmatch", "roid") if k in alert}
        self.label.value = (f"<b>{self.index + 1} / {len(self.alerts)}</b> {alert.get('objectId')} "
                            f"{alert.get('candid')} {extra}")
        show_figures(self.out, [plot_alert(alert)])

    def next(self) -> None:
        self.index = min(self.index + 1, max(len(self.alerts) - 1, 0))
        self.show()

    def previous(self) -> None:
        self.index = max(self.index - 1, 0)
        self.show()

    def save(self) -> Path | None:
        if not self.alerts:
            return None
        path = save_alert(self.alerts[self.index], self.save_to, self.schema)
        self.saved.append(path)
        self.label.value += f" saved to {path}"
        return path
