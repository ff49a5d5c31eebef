"""Reading and linting Prometheus text expositions: what the tests scrape from the worker
and the starter, parsed by prometheus_client's own parser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")
# Units that are not base units, as promtool's linter lists them (use seconds, bytes).
NON_BASE_UNITS = ("milliseconds", "millis", "microseconds", "nanoseconds", "minutes",
                  "hours", "days", "kilobytes", "megabytes", "gigabytes", "ms")
UNITS = ("seconds", "bytes", "ratio", "total")


@dataclass(frozen=True)
class Family:
    name: str  # the name on the TYPE line (a counter's carries _total)
    type: str
    help: str
    samples: tuple[Sample, ...]


@dataclass
class Scrape:
    text: str
    families: dict[str, Family] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls(text)
        for family in text_string_to_metric_families(text):
            # The parser drops a counter's _total from the family's name; its samples keep it.
            name = family.name + "_total" if family.type == "counter" else family.name
            scrape.families[name] = Family(name, family.type, family.documentation,
                                           tuple(family.samples))
        return scrape

    def samples(self) -> Iterator[tuple[Family, Sample]]:
        for family in self.families.values():
            for sample in family.samples:
                yield family, sample

    def value(self, sample: str, **labels: str) -> float:
        """The sum over every series of `sample` whose labels include `labels`."""
        return sum(s.value for _, s in self.samples()
                   if s.name == sample and labels.items() <= s.labels.items())

    def label_values(self, sample: str, label: str) -> set[str]:
        return {s.labels[label] for _, s in self.samples()
                if s.name == sample and label in s.labels}


def lint(scrape: Scrape, *, strict_prefix: str | None = None) -> list[str]:
    """promtool-style naming problems of every family; families named with
    `strict_prefix` (the engine's own) also need help text and a unit where they time."""
    problems: list[str] = []
    for name, family in scrape.families.items():
        strict = strict_prefix is not None and name.startswith(strict_prefix)
        where = f"{name} ({family.type})"
        if not SNAKE.match(name):
            problems.append(f"{where}: not snake_case")
        parts = name.split("_")
        if family.type == "counter":
            if not name.endswith("_total") or name.endswith("_total_total"):
                problems.append(f"{where}: a counter ends in one _total")
        elif "total" in parts:
            problems.append(f"{where}: only counters end in _total")
        if "total" in parts[:-1]:
            problems.append(f"{where}: _total in the middle of the name")
        if any(unit in parts for unit in NON_BASE_UNITS):
            problems.append(f"{where}: a non-base unit (use seconds, bytes)")
        for unit in UNITS:
            if f"_{unit}_{unit}" in name:
                problems.append(f"{where}: doubled suffix _{unit}")
        if family.type in ("histogram", "summary") and name.endswith(
                ("_count", "_sum", "_bucket")):
            problems.append(f"{where}: a reserved suffix in a histogram's name")
        if family.type == "histogram":
            kinds = {s.name[len(name):] for s in family.samples}
            if family.samples and not {"_bucket", "_sum", "_count"} <= kinds:
                problems.append(f"{where}: samples {sorted(kinds)}")
        if strict:
            if not family.help.strip():
                problems.append(f"{where}: no help text")
            timed = family.type == "histogram" or "duration" in parts
            if timed and not name.endswith("_seconds"):
                problems.append(f"{where}: a duration without _seconds")
        for sample in family.samples:
            for label in sample.labels:
                if label != "le" and not LABEL.match(label):
                    problems.append(f"{where}: label {label!r} is not snake_case")
                if label.startswith("__"):
                    problems.append(f"{where}: label {label!r} is reserved")
    return sorted(set(problems))
