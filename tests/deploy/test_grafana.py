"""The Grafana dashboard (deploy/grafana/seq2seq-serve.json) against what the service really exports.

Every panel query and template variable is parsed for the metric names and label names it uses,
and those are compared with a real /metrics scrape of an app serving the tiny test models after
traffic that makes every family the dashboard reads report samples. A renamed metric or label
in service/metrics.py (or a typo in the dashboard) fails here instead of showing an empty panel.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.engine.process import EngineProcess
from service.settings import Settings
from tests.server_process import ROOT
from tests.tiny_models import make_tiny_store

DASHBOARD = ROOT / "deploy" / "grafana" / "seq2seq-serve.json"
# Attached by Prometheus to every series it scrapes (the target's labels), so never in /metrics.
TARGET_LABELS = frozenset({"instance", "job"})
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_TOKEN = re.compile(r"(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_:][\w:]*)\s*(?P<call>\()?")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*([A-Za-z_]\w*)\s*\)$")


@dataclass(frozen=True)
class QueryRefs:
    """The metric names and the label names (grouping clauses and matchers) one PromQL expression uses."""

    metrics: frozenset[str]
    labels: frozenset[str]


def promql_refs(expr: str) -> QueryRefs:
    """Metric and label names in ``expr``: strings, matchers, grouping clauses, ranges and offsets
    are taken out first (recording the label names), then every identifier that is not a function call
    or a keyword is a metric name. Grafana's ``$variables`` only occur inside strings and ranges."""
    expr = _STRING.sub('""', expr)
    labels: set[str] = set()
    for matchers in _MATCHERS.findall(expr):
        labels.update(_MATCHER_LABEL.findall(matchers))
    expr = _MATCHERS.sub(" ", expr)
    for grouping in _GROUPING.findall(expr):
        labels.update(name.strip() for name in grouping.split(",") if name.strip())
    expr = _OFFSET.sub(" ", _RANGE.sub(" ", _GROUPING.sub(" ", expr)))
    metrics = {
        m["name"] for m in _TOKEN.finditer(expr) if m["name"] and not m["call"] and m["name"] not in PROMQL_KEYWORDS
    }
    return QueryRefs(frozenset(metrics), frozenset(labels))


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, rows' nested panels included."""
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                queries.append((f"panel {inner['title']!r} target {target['refId']}", target["expr"]))
    return queries


# -- a real scrape ----------------------------------------------------------------------------------


@dataclass
class Exported:
    """What one /metrics scrape holds: each sample name with the label names its samples carry."""

    labels: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Exported:
        exported = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                exported.labels.setdefault(sample.name, set()).update(sample.labels)
        return exported


async def _wait_for_sample(client: httpx.AsyncClient, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while name not in Exported.parse((await client.get("/metrics")).text).labels:
        assert time.monotonic() < deadline, f"/metrics has no {name} sample after {timeout_s:.0f} s"
        await asyncio.sleep(0.1)


async def scrape_after_traffic(store: Path) -> str:
    """/metrics of an app on ``store`` (tiny models, engine processes as deployed) after traffic
    that gives every family samples: translations and a chat, a burst past a one-request queue
    (429s), an invalid request (422), and a chat engine process killed and restarted."""
    settings = Settings(
        model_store=store, threads=1, max_queue=1, max_texts=1, max_batch_rows=1, max_beam_size=1, restart_engines=True
    )
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            long = {"text": "ein mann spielt im park", "source_lang": "de", "min_length": 100, "max_length": 100}
            burst = await asyncio.gather(*(client.post("/translate", json=long) for _ in range(8)))
            assert {r.status_code for r in burst} == {200, 429}, [r.status_code for r in burst]
            assert (await client.post("/chat", json={"message": "a man", "language": "en"})).status_code == 200
            assert (await client.post("/translate", json={"text": ""})).status_code == 422
            engine = app.state.registry.entries["chat-en"].engine
            assert isinstance(engine, EngineProcess) and engine.pid is not None
            os.kill(engine.pid, signal.SIGKILL)
            await _wait_for_sample(client, "seq2seq_engine_restarts_total", timeout_s=30)
            return (await client.get("/metrics")).text


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    store = make_tiny_store(tmp_path_factory.mktemp("grafana") / "model_store")
    return Exported.parse(asyncio.run(scrape_after_traffic(store)))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


# -- tests ------------------------------------------------------------------------------------------


def test_promql_refs_tells_metrics_from_functions_labels_and_variables() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(seq2seq_request_latency_seconds_bucket{route=~"$route",'
        ' status!="5.."}[$__rate_interval]))) / on(instance) group_left() max without (model) (up offset 5m) > bool 1e3'
    )
    refs = promql_refs(expr)
    assert refs.metrics == {"seq2seq_request_latency_seconds_bucket", "up"}
    assert refs.labels == {"le", "route", "status", "instance", "model"}
    assert promql_refs("sum(rate(a_total[5m])) by (model) and b:recorded").metrics == {"a_total", "b:recorded"}


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    uses_variable = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == uses_variable, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == uses_variable and target["expr"].strip(), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_names_exported_metrics_and_their_labels(dashboard: dict[str, Any], exported: Exported) -> None:
    problems = []
    for where, expr in dashboard_queries(dashboard):
        refs = promql_refs(expr)
        assert refs.metrics, f"{where}: no metric in {expr!r}"
        for metric in sorted(refs.metrics):
            if metric not in exported.labels:
                problems.append(f"{where}: {metric} is not in /metrics")
                continue
            missing = refs.labels - exported.labels[metric] - TARGET_LABELS
            if missing:
                problems.append(f"{where}: {metric} has no label {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_template_variables_read_exported_labels(dashboard: dict[str, Any], exported: Exported) -> None:
    queries = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert queries
    for variable in queries:
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match, f"variable {variable['name']}: expected label_values(metric, label)"
        metric, label = match.groups()
        assert label in exported.labels.get(metric, set()), f"variable {variable['name']}: {metric} has no {label}"


def test_quantiles_keep_the_bucket_label(dashboard: dict[str, Any]) -> None:
    """histogram_quantile needs ``le`` through every aggregation of a ``_bucket`` series."""
    for where, expr in dashboard_queries(dashboard):
        if "histogram_quantile" not in expr:
            continue
        refs = promql_refs(expr)
        assert all(m.endswith("_bucket") for m in refs.metrics) and "le" in refs.labels, f"{where}: {expr}"
