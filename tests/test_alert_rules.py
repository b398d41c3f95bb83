"""The alert rules in monitors/prometheus: valid for promtool, unit-tested, and consistent with
the metrics mailpipe exports and the runbooks in the README."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mailpipe.metrics import Metrics
from mailpipe.providers import OTHER, PROVIDERS

ROOT = Path(__file__).parent.parent
RULES = ROOT / "monitors" / "prometheus" / "mailpipe-alerts.yml"
TESTS = ROOT / "monitors" / "prometheus" / "mailpipe-alerts.test.yml"
DASHBOARD = ROOT / "monitors" / "grafana" / "mailpipe.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make test` installs it")
ALERTS = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    result = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], capture_output=True, text=True, timeout=120,
                            cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_in_the_readme(rule) -> None:
    assert re.fullmatch(r"Mailpipe[A-Z][A-Za-z]+", rule["alert"])
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    anchor = rule["annotations"]["runbook"].partition("#")[2]
    assert anchor == rule["alert"].lower()
    assert f"\n#### {rule['alert']}\n" in (ROOT / "README.md").read_text()


def test_every_metric_the_rules_and_dashboard_use_is_one_mailpipe_exports() -> None:
    exported = {name for family in Metrics().registry.collect() for name in
                {family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_count",
                 f"{family.name}_sum"}}
    used = set(re.findall(r"\bmailpipe_[a-z_]+\b", RULES.read_text() + DASHBOARD.read_text()))
    assert used <= exported, used - exported


def test_the_dashboard_asks_for_its_data_source() -> None:
    assert '"${datasource}"' in DASHBOARD.read_text() or '"$datasource"' in DASHBOARD.read_text()


def test_every_provider_the_rules_name_is_one_mailpipe_knows() -> None:
    named = {name for match in re.findall(r'provider(?:=~|!=|=)"([^"]+)"', RULES.read_text())
             for name in match.split("|")}
    assert named <= {p.name for p in PROVIDERS} | {OTHER}, named - {p.name for p in PROVIDERS}
