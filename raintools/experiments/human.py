"""Human labelling in a notebook: one answer at a time, one click per label, saved immediately.

    labeller = HumanLabeller(rows, "runs/human_labels.csv")
    labeller          # in Jupyter: shows the panel (ipywidgets)

`rows` are what you want labelled: dicts or objects with `id`, `prompt` and either `response`
(one answer) or `responses` (a dict method -> answer, e.g. {"vanilla": ..., "rain": ...}). Each
answer is a separate unit to label, with id `<id>` or `<id>::<method>`; by default the method
name is hidden and the units are shown in a fixed shuffled order, so the labeller does not know
which decoder wrote what.

Every click appends one row to the CSV (`unit_id, item_id, method, label, time`) and flushes it,
so closing the notebook loses nothing. On construction the CSV is read back and the labeller
resumes at the first unit with no label. The logic lives in `label()`, `skip()` and `back()`,
which the buttons call, so it is testable without a browser.
"""

from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import ConfigError, DataError

__all__ = ["HumanLabeller", "Unit", "read_labels"]

FIELDS = ("unit_id", "item_id", "method", "label", "time")


@dataclass(frozen=True)
class Unit:
    """One answer to label."""

    unit_id: str
    item_id: str
    method: str
    prompt: str
    response: str


def _get(row, key, default=None):
    if isinstance(row, dict):
        return row.get(key, default)
    if hasattr(row, key):
        return getattr(row, key)
    meta = getattr(row, "meta", None)
    if isinstance(meta, dict):
        return meta.get(key, default)
    return default


def _units(rows: Iterable) -> list[Unit]:
    units: list[Unit] = []
    for n, row in enumerate(rows):
        item_id, prompt = _get(row, "id"), _get(row, "prompt")
        if item_id is None or prompt is None:
            raise ConfigError(f"Row {n} needs an 'id' and a 'prompt'.")
        responses = _get(row, "responses")
        if responses is None:
            response = _get(row, "response")
            if response is None:
                raise ConfigError(f"Row {n} (id {item_id}) needs a 'response' or 'responses'.")
            units.append(Unit(str(item_id), str(item_id), "", str(prompt), str(response)))
        else:
            if not isinstance(responses, dict) or not responses:
                raise ConfigError(f"Row {n} (id {item_id}): 'responses' must be a non-empty dict "
                                  f"method -> answer.")
            for method, response in responses.items():
                units.append(Unit(f"{item_id}::{method}", str(item_id), str(method), str(prompt),
                                  str(response)))
    ids = [u.unit_id for u in units]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(f"Duplicate ids to label: {dup}.")
    return units


def read_labels(path) -> dict[str, str]:
    """unit_id -> label from a labels CSV (the last click for a unit wins)."""
    path = Path(path)
    labels: dict[str, str] = {}
    if not path.is_file() or path.stat().st_size == 0:
        return labels
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return labels
        if tuple(header) != FIELDS:
            raise DataError(f"{path}, line 1: not a labels file (header should be "
                            f"{','.join(FIELDS)}, found {','.join(header)}).")
        for row in reader:
            if not row:
                continue
            if len(row) != len(FIELDS):
                raise DataError(f"{path}, line {reader.line_num}: expected {len(FIELDS)} fields, "
                                f"found {len(row)}.")
            labels[row[0]] = row[3]
    return labels


class HumanLabeller:
    """A resumable labelling panel; see the module docstring."""

    def __init__(self, items: Iterable, out_csv, labels: Sequence[str] = ("harmless", "harmful"),
                 labeller: str = "", shuffle: bool = True, seed: int = 0, show_method: bool = False):
        self.labels = tuple(str(x) for x in labels)
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels must be at least two distinct strings.")
        self.units = _units(items)
        if shuffle:
            random.Random(seed).shuffle(self.units)
        self.out_csv = Path(out_csv)
        self.labeller = labeller
        self.show_method = show_method
        self.done = read_labels(self.out_csv)
        unknown = {v for v in self.done.values() if v not in self.labels and v != ""}
        if unknown:
            raise DataError(f"{self.out_csv}: holds labels {sorted(unknown)} that are not among "
                            f"{list(self.labels)}.")
        self.index = self._next_unlabelled(0)
        self._widget = None

    # -- state
    def _next_unlabelled(self, start: int) -> int:
        for i in range(start, len(self.units)):
            if self.units[i].unit_id not in self.done:
                return i
        for i in range(0, min(start, len(self.units))):
            if self.units[i].unit_id not in self.done:
                return i
        return len(self.units)

    @property
    def finished(self) -> bool:
        return all(u.unit_id in self.done for u in self.units)

    @property
    def current(self) -> Unit | None:
        return self.units[self.index] if self.index < len(self.units) else None

    @property
    def remaining(self) -> int:
        return sum(u.unit_id not in self.done for u in self.units)

    def results(self) -> dict[str, str]:
        """unit_id -> label for the units of this session."""
        return {u.unit_id: self.done[u.unit_id] for u in self.units if u.unit_id in self.done}

    # -- actions (the buttons call these)
    def label(self, value: str) -> Unit | None:
        """Record `value` for the current unit (one CSV row, flushed) and move to the next
        unlabelled unit. Returns the unit labelled."""
        value = str(value)
        if value not in self.labels:
            raise ConfigError(f"Unknown label {value!r}: use one of {list(self.labels)}.")
        unit = self.current
        if unit is None:
            return None
        self._append(unit, value)
        self.done[unit.unit_id] = value
        self.index = self._next_unlabelled(self.index + 1)
        self._refresh()
        return unit

    def skip(self) -> None:
        """Leave the current unit unlabelled for now and show the next one."""
        if self.units:
            nxt = self.index + 1
            self.index = nxt if nxt < len(self.units) else self._next_unlabelled(0)
        self._refresh()

    def back(self) -> None:
        """Show the previous unit (to relabel it; the newest click wins)."""
        if self.index > 0:
            self.index -= 1
        self._refresh()

    def _append(self, unit: Unit, value: str) -> None:
        self.out_csv.parent.mkdir(parents=True, exist_ok=True)
        new = not self.out_csv.is_file() or self.out_csv.stat().st_size == 0
        with open(self.out_csv, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(FIELDS)
            writer.writerow([unit.unit_id, unit.item_id, unit.method, value,
                             time.strftime("%Y-%m-%dT%H:%M:%S")])
            f.flush()

    # -- the widget
    def widget(self):
        """The ipywidgets panel (built on first use)."""
        if self._widget is None:
            self._widget = self._build()
        self._refresh()
        return self._widget

    def _build(self):
        import ipywidgets as w

        self._w_progress = w.HTML()
        self._w_prompt = w.HTML()
        self._w_response = w.HTML()
        buttons = []
        for lab in self.labels:
            b = w.Button(description=lab, button_style="")
            b.on_click(lambda _b, lab=lab: self.label(lab))
            buttons.append(b)
        skip = w.Button(description="skip")
        skip.on_click(lambda _b: self.skip())
        back = w.Button(description="back")
        back.on_click(lambda _b: self.back())
        return w.VBox([self._w_progress, self._w_prompt, self._w_response,
                       w.HBox(buttons + [back, skip])])

    def _refresh(self) -> None:
        if self._widget is None:
            return
        import html

        n = len(self.units)
        self._w_progress.value = (f"<b>{n - self.remaining} / {n} labelled</b> &mdash; saving to "
                                  f"<code>{html.escape(str(self.out_csv))}</code>")
        unit = self.current
        if unit is None or self.finished and unit.unit_id in self.done:
            self._w_prompt.value = "<b>All done.</b>" if self.finished else ""
            self._w_response.value = ""
            return
        method = f" <i>({html.escape(unit.method)})</i>" if self.show_method and unit.method else ""
        previous = self.done.get(unit.unit_id)
        note = f" &mdash; current label: <b>{html.escape(previous)}</b>" if previous else ""
        self._w_prompt.value = (f"<p><b>Prompt</b> [{html.escape(unit.unit_id if self.show_method else unit.item_id)}]"
                                f"{note}</p><pre style='white-space:pre-wrap'>"
                                f"{html.escape(unit.prompt)}</pre>")
        self._w_response.value = (f"<p><b>Answer</b>{method}</p><pre style='white-space:pre-wrap'>"
                                  f"{html.escape(unit.response)}</pre>")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())

    def __repr__(self) -> str:
        return (f"HumanLabeller({len(self.units)} answers, {len(self.units) - self.remaining} "
                f"labelled, saving to {self.out_csv})")
