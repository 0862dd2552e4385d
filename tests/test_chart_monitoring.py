"""The chart's Grafana dashboard and PrometheusRule: shape, toggles, and metric names that
the gateway's /metrics really exposes (scraped from a running gateway)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_chart import CHART, MONITORING, NAMESPACE, helm, only, render

from gateway.testing import Stack

METRIC = re.compile(r"\bparrot_[a-z0-9_]+\b")
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
ALERTS = {"ParrotEngineDown", "ParrotNoEngine", "ParrotHighErrorRatio", "ParrotQueueWaitHigh"}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def dashboard_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cm = only(objects, "ConfigMap", "monitoring")
    (text,) = cm["data"].values()
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rules_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = only(objects, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def balanced(expr: str) -> bool:
    depth = {"(": 0, "{": 0, "[": 0}
    close = {")": "(", "}": "{", "]": "["}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in depth:
            depth[ch] += 1
        elif ch in close:
            depth[close[ch]] -= 1
            if depth[close[ch]] < 0:
                return False
    return not any(depth.values())


def exposed_names(text: str) -> tuple[set[str], set[str]]:
    """(sample names, family names) that /metrics exposes or declares: a labelled series
    with no sample yet is declared by its # TYPE line, and its sample names follow from
    the type. Queries must use sample names; prose may name a family (a histogram)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created", ""),
        "gauge": ("",),
    }
    names: set[str] = set()
    families: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names, families


# ---------------------------------------------------------------- shape and toggles


def test_dashboard_configmap_for_the_grafana_sidecar(chart: Any) -> None:
    objects = render(chart, MONITORING)
    cm = only(objects, "ConfigMap", "monitoring")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    dashboard = dashboard_of(objects)
    assert dashboard["uid"] == "parrot-gateway" and dashboard["schemaVersion"] >= 36
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("latency", "first token", "queue wait", "in-flight", "cache-hit", "sessions",
                  "errors"):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert balanced(t["expr"]) and METRIC.search(t["expr"]), t["expr"]
    # Where Grafana's sidecar only watches its own namespace.
    moved = render(chart, {"grafana": {"dashboard": {
        "enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "LLM"}}}})
    cm = only(moved, "ConfigMap", "monitoring")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}


def test_prometheus_rule_shape(chart: Any) -> None:
    objects = render(chart, MONITORING)
    rule = only(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    (group,) = rule["spec"]["groups"]
    assert group["name"] and isinstance(group["rules"], list)
    rules = rules_of(objects)
    assert {r["alert"] for r in rules} == ALERTS
    service = only(objects, "Service", "gateway")["metadata"]["name"]
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        assert isinstance(r["expr"], str) and balanced(r["expr"]), r["expr"]
        assert DURATION.match(r["for"]), r["for"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        # Scoped to this release's series: the ServiceMonitor's job is the Service name.
        assert f'job="{service}"' in r["expr"] and f'namespace="{NAMESPACE}"' in r["expr"]


def test_prometheus_rule_toggles_and_extras(chart: Any) -> None:
    extra = {"alert": "ParrotSlowTTFT", "expr": "histogram_quantile(0.9, sum by (le) "
             "(rate(parrot_time_to_first_token_seconds_bucket[5m]))) > 2", "for": "10m",
             "labels": {"severity": "warning"}, "annotations": {"summary": "slow", "description": "x"}}
    values = {"prometheusRule": {
        "enabled": True, "engineDown": {"enabled": False},
        "queueWait": {"thresholdSeconds": 12.5, "for": "1h"},
        "selector": 'service="gw"', "additionalRules": [extra]}}
    rules = {r["alert"]: r for r in rules_of(render(chart, values))}
    assert set(rules) == ALERTS - {"ParrotEngineDown", "ParrotNoEngine"} | {"ParrotSlowTTFT"}
    assert rules["ParrotQueueWaitHigh"]["expr"].endswith("> 12.5")
    assert rules["ParrotQueueWaitHigh"]["for"] == "1h"
    assert 'parrot_requests_total{service="gw",status=~"5.."}' in rules["ParrotHighErrorRatio"]["expr"]
    assert rules["ParrotSlowTTFT"] == extra
    with pytest.raises(helm.HelmRenderError, match="nothing to create"):
        render(chart, {"prometheusRule": {"enabled": True, "engineDown": {"enabled": False},
                                          "errorRatio": {"enabled": False},
                                          "queueWait": {"enabled": False}}})


def test_monitoring_values_are_checked_at_install(chart: Any) -> None:
    with pytest.raises(helm.HelmValuesError, match="for"):
        render(chart, {"prometheusRule": {"enabled": True, "queueWait": {"for": "ten minutes"}}})
    with pytest.raises(helm.HelmValuesError, match="threshold"):
        render(chart, {"prometheusRule": {"enabled": True, "errorRatio": {"threshold": 5}}})
    with pytest.raises(helm.HelmValuesError, match="enabeld"):
        render(chart, {"grafana": {"dashboard": {"enabeld": True}}})


# ---------------------------------------------------------------- names vs /metrics


def test_metric_names_exist_in_the_gateway(chart: Any, stack: Stack) -> None:
    """Every metric the dashboard, the alerts, values.yaml and the chart README name is one
    that a running gateway's /metrics exposes."""
    # Some traffic first, so that labelled series have samples too.
    httpx.post(stack.url + "/v1/chat/completions", timeout=30, json={
        "model": "", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    text = httpx.get(stack.url + "/metrics", timeout=10).text
    samples, families = exposed_names(text)
    assert "parrot_requests_total" in samples and "parrot_sessions_total" in samples

    objects = render(chart, MONITORING)
    named: dict[str, set[str]] = {
        "dashboard": {m for e in dashboard_exprs(dashboard_of(objects)) for m in METRIC.findall(e)},
        "alerts": {m for r in rules_of(objects) for m in METRIC.findall(r["expr"])},
        "values.yaml": set(METRIC.findall((CHART / "values.yaml").read_text())),
        "README.md": set(METRIC.findall((CHART / "README.md").read_text())),
    }
    for where, names in named.items():
        assert names, f"no metric named in {where}: the check would be vacuous"
        exposed = samples if where in ("dashboard", "alerts") else samples | families
        assert names <= exposed, f"{where} names metrics /metrics lacks: {sorted(names - exposed)}"
