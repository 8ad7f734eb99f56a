"""BIDS naming from configurable rules on series description and scan parameters (heudiconv-style, as data).

A rule is a table in ``ingest.bids_rules`` (see ``IngestSection``); the first rule whose every match key holds
names the series (datatype, suffix, entities). Header values are read to decide, never logged or returned:
``classify`` returns the rule's names and the rule's index only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from incloud_kernel.errors import ConfigError

#: Built-in defaults: T1w, T2w, FLAIR, bold (resting state unless a task rule says otherwise) and dwi.
DEFAULT_RULES: list[dict[str, Any]] = [
    {"datatype": "dwi", "suffix": "dwi", "has_bvals": True},
    {"datatype": "dwi", "suffix": "dwi", "series_description": r"dwi|dti|diff", "min_volumes": 2},
    {"datatype": "func", "suffix": "bold", "series_description": r"bold|fmri|rest|func|task",
     "min_volumes": 2, "entities": {"task": "rest"}},
    {"datatype": "anat", "suffix": "FLAIR", "series_description": r"flair", "max_volumes": 1},
    {"datatype": "anat", "suffix": "T1w", "series_description": r"t1|mprage|spgr|bravo|tfl", "max_volumes": 1},
    {"datatype": "anat", "suffix": "T2w", "series_description": r"t2|tse", "max_volumes": 1},
]
MATCH_KEYS = ("series_description", "protocol_name", "image_type", "min_volumes", "max_volumes", "min_tr",
              "max_tr", "has_bvals")
ANATOMICAL_SUFFIXES = frozenset({"T1w", "T2w", "FLAIR", "PDw", "T2starw"})


@dataclass(frozen=True)
class SeriesFacts:
    """What a rule may look at for one series (values stay in memory; never logged)."""

    series_description: str = ""
    protocol_name: str = ""
    image_type: tuple[str, ...] = ()
    volumes: int = 1
    #: Repetition time in seconds.
    repetition_time: float | None = None
    has_bvals: bool = False


@dataclass(frozen=True)
class BidsName:
    datatype: str
    suffix: str
    entities: dict[str, str] = field(default_factory=dict)
    rule: int = -1

    @property
    def anatomical(self) -> bool:
        return self.datatype == "anat" and self.suffix in ANATOMICAL_SUFFIXES


def check_rules(rules: list[Mapping[str, Any]]) -> None:
    for i, rule in enumerate(rules):
        if not rule.get("datatype") or not rule.get("suffix"):
            raise ConfigError(f"ingest.bids_rules[{i}] needs datatype and suffix")
        unknown = set(rule) - set(MATCH_KEYS) - {"datatype", "suffix", "entities"}
        if unknown:
            raise ConfigError(f"ingest.bids_rules[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("series_description", "protocol_name"):
            if key in rule:
                try:
                    re.compile(str(rule[key]))
                except re.error:
                    raise ConfigError(f"ingest.bids_rules[{i}].{key} is not a valid regular expression") from None


def _rule_matches(rule: Mapping[str, Any], facts: SeriesFacts) -> bool:
    if "series_description" in rule and not re.search(str(rule["series_description"]), facts.series_description,
                                                      re.IGNORECASE):
        return False
    if "protocol_name" in rule and not re.search(str(rule["protocol_name"]), facts.protocol_name, re.IGNORECASE):
        return False
    if "image_type" in rule:
        wanted = rule["image_type"] if isinstance(rule["image_type"], list) else [rule["image_type"]]
        present = {v.upper() for v in facts.image_type}
        if not all(str(w).upper() in present for w in wanted):
            return False
    if "min_volumes" in rule and facts.volumes < int(rule["min_volumes"]):
        return False
    if "max_volumes" in rule and facts.volumes > int(rule["max_volumes"]):
        return False
    tr = facts.repetition_time
    if "min_tr" in rule and (tr is None or tr < float(rule["min_tr"])):
        return False
    if "max_tr" in rule and (tr is None or tr > float(rule["max_tr"])):
        return False
    if "has_bvals" in rule and bool(rule["has_bvals"]) != facts.has_bvals:
        return False
    return True


def classify(facts: SeriesFacts, rules: list[Mapping[str, Any]] | None = None) -> BidsName | None:
    """The BIDS name of a series by the first matching rule (site rules, else the defaults); None if none."""
    active = list(rules) if rules else DEFAULT_RULES
    check_rules(active)
    for i, rule in enumerate(active):
        if _rule_matches(rule, facts):
            entities = {str(k): str(v) for k, v in dict(rule.get("entities") or {}).items()}
            return BidsName(str(rule["datatype"]), str(rule["suffix"]), entities, i)
    return None
