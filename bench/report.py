"""The one table the benchmark prints, and its JSON twin."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

_COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass
class Target:
    op: str  # "<=" or ">="
    limit: float
    unit: str = "x"

    def __str__(self) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        return f"{sign} {self.limit:g}{'' if self.unit == 'x' else ' ' + self.unit}"

    def status(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return "n/a"
        return "PASS" if _COMPARE[self.op](value, self.limit) else "MISS"


@dataclass
class Row:
    section: str
    item: str
    figures: str
    ratio: float | None = None
    unit: str = "x"
    target: str = ""
    status: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers, for the JSON only

    def add(
        self, section: str, item: str, figures: str, ratio: float | None = None, target: Target | None = None,
        unit: str = "x",
    ) -> None:
        unit = target.unit if target else unit
        row = Row(section, item, figures, ratio, unit)
        if target:
            row.target, row.status = str(target), target.status(ratio)
        self.rows.append(row)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        header = ("section", "item", "figures", "ratio", "target", "")
        lines = [header] + [
            (r.section, r.item, r.figures, _ratio(r.ratio, r.unit), r.target, r.status) for r in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for n, line in enumerate(lines):
            cells = [cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))]
            out.append("  ".join(cells).rstrip())
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        out += [f"note: {text}" for text in self.notes]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "notes": self.notes, "data": self.data}


def _ratio(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if unit == "x" else f"{value:.1f} {unit}"


def rate(value: float) -> str:
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.1f}/s"


def ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan
