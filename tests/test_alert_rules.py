"""deploy/prometheus-alerts.yml: well formed, naming only metrics the daemon exports, and (when promtool is
installed: Debian package `prometheus`) accepted by `promtool check rules` and passing its unit tests in
deploy/prometheus-alerts.test.yml (each rule fires on the series it is meant for, and not on others)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from connector.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus-alerts.test.yml"
REQUIRED = {"LifecycleSyncsFailing", "LifecycleTokenExpiresSoon", "LifecycleActionsFailing", "LifecycleKpiBelowTarget"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
PROMQL_WORDS = {"and", "or", "unless", "on", "ignoring", "by", "without", "offset", "time", "increase", "rate",
                "max_over_time", "min_over_time", "present_over_time", "group_left", "group_right", "bool"}


def exported_names() -> set[str]:
    """Every sample name the daemon's registry can expose (counters with _total, histograms' parts)."""
    names: set[str] = set()
    for family in Metrics("p", "csv").registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def load_rules() -> list[dict]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and set(data) == {"groups"}
    rules = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        rules += group["rules"]
    return rules


def test_alert_rules_are_well_formed_and_read_exported_metrics():
    rules = load_rules()
    assert {r["alert"] for r in rules} >= REQUIRED
    exported = exported_names()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert re.match(r"^[A-Z][A-Za-z0-9]+$", rule["alert"]) and isinstance(rule["expr"], str) and rule["expr"].strip()
        assert DURATION.match(str(rule.get("for", "0m"))), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        notes = rule["annotations"]
        assert {"summary", "description", "summary_ru", "description_ru"} <= set(notes), rule["alert"]
        assert re.search(r"[а-яА-Я]", notes["summary_ru"]) and re.search(r"[а-яА-Я]", notes["description_ru"])
        assert rule["expr"].count("(") == rule["expr"].count(")")
        used = {w for w in re.findall(r"\b[a-z_][a-z0-9_]*\b", re.sub(r'\{[^}]*\}|"[^"]*"', "", rule["expr"]))
                if w.startswith("lifecycle_")}
        assert used and used <= exported, (rule["alert"], used - exported)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in check.stdout + check.stderr
    run = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
