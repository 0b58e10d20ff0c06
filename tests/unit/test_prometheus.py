"""The shipped alert rules under Prometheus's own tools: `promtool check rules`, and `promtool test
rules` unit tests (tests/prometheus/alert_rules_test.yaml) in which every alert fires on series that
should fire it and stays quiet on their neighbours. promtool comes with Debian's prometheus package,
which `make test` installs (deploy/tools/install_debian.sh prometheus)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from testkit.prometheus import RULES, promtool_binary

UNIT_TESTS = Path(__file__).resolve().parents[1] / "prometheus" / "alert_rules_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = promtool_binary()
    if found is None:
        pytest.skip("promtool is not installed and deploy/tools/install_debian.sh could not install it")
    return found


def test_promtool_accepts_the_shipped_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_where_it_should(promtool):
    result = subprocess.run(
        [promtool, "test", "rules", UNIT_TESTS.name], capture_output=True, text=True, timeout=60, cwd=UNIT_TESTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    fired = {
        case["alertname"]
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == alerts  # a new alert needs a unit test that makes it fire


def test_a_wrong_expectation_fails(promtool, tmp_path):
    """The unit tests can fail: the same file with the firing model swapped for its quiet neighbour."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(RULES)]
    tests["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["model_name"] = "fast"
    wrong = tmp_path / "wrong_test.yaml"
    wrong.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(wrong)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr
