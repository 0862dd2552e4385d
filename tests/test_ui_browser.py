"""The session view in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which .ci/run installs) driven by Selenium against a real gateway
running a multi-step session on simulated engines at time-scale 1 (slow enough that
statuses visibly change between the page's polls).

Set PARROT_UPDATE_RESULTS=1 to refresh results/session-view.png (shown in the README).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.redis_server import RedisServer
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,900", "--hide-scrollbars"]
RESULTS = Path(__file__).resolve().parents[1] / "results"
KA = {"Authorization": "Bearer key-a"}
KB = {"Authorization": "Bearer key-b"}
SETTLED = ("done", "failed", "upstream_failed", "cancelled")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="parrot-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two simulated engines at time-scale 1, API keys for tenants a and b, a 1500-byte
    variable limit so that a long output fails its producer, and engine calls streamed so
    that records know their first token (the timeline splits prefill and decode)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    keys.write_text(json.dumps({"keys": {"key-a": {"tenant": "a"}, "key-b": {"tenant": "b"}}}))
    s = start_stack(redis_server.url, engines=2, time_scale=1.0, api_keys=str(keys),
                    max_value_bytes=1500, engine_streaming=True)
    yield s
    s.stop()


def submit(url: str, sid: str, content: str, output: str, max_tokens: int,
           criteria: str = "latency") -> None:
    r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
        "model": "", "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "ignore_eos": True,
    }, headers={**KA, "X-Parrot-Session": sid, "X-Parrot-Output": output, "X-Parrot-Async": "1",
                "X-Parrot-Criteria": criteria})
    assert r.status_code == 200, r.text


def wait_for(driver: Any, script: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.1)


def snapshot(driver: Any) -> dict[str, Any]:
    snap: dict[str, Any] = driver.execute_script("return window.parrotView.snapshot()")
    return snap


def set_headers(driver: Any, headers: dict[str, str]) -> None:
    """What an auth proxy in front of the gateway would add to every request of the page."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})


# ---------------------------------------------------------------- a live session


def test_live_session_view(browser: Any, live: Stack, tmp_path: Path) -> None:
    url, sid = live.url, "ui-live"
    set_headers(browser, {})
    r = httpx.put(f"{url}/v1/sessions/{sid}/variables/doc", headers=KA,
                  json={"value": "Parrots are long-lived, social and vocal birds. " * 8})
    assert r.status_code == 200
    link = httpx.post(f"{url}/v1/sessions/{sid}/view", headers=KA).json()
    browser.get(link["url"])  # a signed link: no key in the browser at all
    wait_for(browser, "return document.body.dataset.state === 'live'")
    assert snapshot(browser)["variables"] == [{"name": "doc", "status": "ready", "critical": False}]

    # A map-reduce, and a producer whose output is too large for a variable (1500 bytes):
    # it fails, and its consumers (transitively) fail with upstream_failed.
    submit(url, sid, "Summarise: {{doc}}", "a", 90)
    submit(url, sid, "First half of {{a}}", "b1", 90, "throughput")
    submit(url, sid, "Second half of {{a}}", "b2", 110, "throughput")
    submit(url, sid, "Combine {{b1}} with {{b2}}", "c", 60)
    submit(url, sid, "Write at length about {{doc}}", "big", 400)
    submit(url, sid, "Use {{big}}", "d", 10)
    submit(url, sid, "Final: {{d}} and {{c}}", "e", 10)

    seen: dict[str, list[str]] = {}
    deadline = time.monotonic() + 60
    while True:
        snap = snapshot(browser)
        for req in snap["requests"]:
            history = seen.setdefault(req["output"], [])
            if not history or history[-1] != req["status"]:
                history.append(req["status"])
        if len(snap["requests"]) == 7 and all(q["status"] in SETTLED for q in snap["requests"]):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.15)

    # Statuses changed on the page while the session ran.
    assert seen["c"][0] == "waiting" and seen["c"][-1] == "done", seen
    assert any("queued" in h for h in seen.values()), seen
    final = {q["output"]: q["status"] for q in snap["requests"]}
    assert final == {"a": "done", "b1": "done", "b2": "done", "c": "done", "big": "failed",
                     "d": "upstream_failed", "e": "upstream_failed"}

    # Nodes and edges are the session's: one per variable, one per placeholder/output.
    graph = httpx.get(f"{url}/v1/sessions/{sid}", headers=KA).json()
    assert {v["name"] for v in snap["variables"]} == {"doc", "a", "b1", "b2", "c", "big", "d", "e"}
    expected = {(f"v:{i}", q["id"]) for q in graph["requests"] for i in q["inputs"]}
    expected |= {(q["id"], f"v:{q['output']}") for q in graph["requests"]}
    assert {(e["from"], e["to"]) for e in snap["edges"]} == expected and len(expected) == 16

    # The critical path is the gateway's, and it is marked on nodes, edges and rows.
    path = graph["critical_path"]
    assert path and snap["critical_path"] == path
    assert {q["id"] for q in snap["requests"] if q["critical"]} == set(path)
    assert sum(e["critical"] for e in snap["edges"]) == 2 * (len(path) - 1)
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#list .row')].map(r => "
        "[r.dataset.id, r.dataset.status, r.classList.contains('critical')])")
    assert {rid for rid, _, crit in rows if crit} == set(path)
    by_id = {rid: status for rid, status, _ in rows}
    outputs = {q["id"]: q["output"] for q in graph["requests"]}
    assert {outputs[rid]: s for rid, s in by_id.items()} == final
    chip = browser.find_element("id", "count-upstream_failed").text
    assert chip == "upstream_failed 2"

    # Clicking a row shows why it failed; objective and group are shown.
    e_id = next(q["id"] for q in graph["requests"] if q["output"] == "e")
    browser.find_element("css selector", f'#list .row[data-id="{e_id}"]').click()
    details = browser.find_element("id", "details").text
    assert "upstream_failed" in details and "input variable 'd' failed" in details
    b1_id = next(q["id"] for q in graph["requests"] if q["output"] == "b1")
    browser.find_element("css selector", f'#list .row[data-id="{b1_id}"]').click()
    details = browser.find_element("id", "details").text
    assert "task group" in details and "objective" in details and "prefill" in details

    # The timeline has a row per engine that ran something, with queue/prefill/decode.
    gantt = browser.execute_script(
        "return parrotView.gantt.data.rows.map(r => ({engine: r.engine, bars: r.bars.map("
        "b => ({id: b.id, phases: b.phases.map(p => p.kind), cached: b.cached}))}))")
    engines = {row["engine"] for row in gantt}
    assert engines & set(live.engine_urls)
    assert engines <= set(live.engine_urls) | {"(gateway queue / in flight)"}
    bars = {b["id"]: b for row in gantt for b in row["bars"]}
    for q in graph["requests"]:
        if q["status"] == "done":
            assert bars[q["id"]]["phases"] == ["queue", "prefill", "decode"]
            assert bars[q["id"]]["cached"] is not None

    # The page ran without a script error or a refused resource (CSP, 404).
    problems = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == []

    browser.execute_script("parrotView.dag.fit(); parrotView.flush()")  # the whole DAG
    time.sleep(0.3)
    shot = tmp_path / "session-view.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PARROT_UPDATE_RESULTS") == "1":
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(shot, RESULTS / "session-view.png")


def test_key_in_a_header_and_other_tenants(browser: Any, live: Stack) -> None:
    url, sid = live.url, "ui-header"
    r = httpx.post(url + "/v1/chat/completions", timeout=30, headers={**KA, "X-Parrot-Session": sid},
                   json={"model": "", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200

    set_headers(browser, KA)  # as an auth proxy would: on the page and its data calls
    browser.get(f"{url}/ui/sessions/{sid}")
    wait_for(browser, "return document.body.dataset.state === 'live'")
    assert [q["status"] for q in snapshot(browser)["requests"]] == ["done"]
    browser.get(f"{url}/ui")
    wait_for(browser, "return document.body.dataset.state === 'live'")
    listed = browser.execute_script(
        "return [...document.querySelectorAll('#sessions tbody tr')].map(r => r.dataset.session)")
    assert sid in listed and "ui-live" in listed

    set_headers(browser, KB)  # another tenant: not found, and nothing of the session leaks
    browser.get(f"{url}/ui/sessions/{sid}")
    body = browser.find_element("tag name", "body").text
    assert "session_not_found" in body and "parrotView" not in browser.page_source
    browser.get(f"{url}/ui")
    wait_for(browser, "return document.body.dataset.state === 'live'")
    assert browser.execute_script("return document.querySelectorAll('#sessions tbody tr').length") == 0

    set_headers(browser, {})
    browser.get(f"{url}/ui/sessions/{sid}")
    assert "missing API key" in browser.find_element("tag name", "body").text


# ---------------------------------------------------------------- size


def synthetic(requests: int, width: int = 50, now: float = 1_000_000.0) -> dict[str, Any]:
    """A session graph payload shaped like the page's data: stages of `width` requests,
    each reading two outputs of the stage before (the first stage reads one input)."""
    reqs, names = [], []
    for i in range(requests):
        stage, j = divmod(i, width)
        prev = [f"v{stage - 1}_{k}" for k in (j, (j + 1) % width)
                if stage and (stage - 1) * width + k < requests]
        inputs = prev or ["doc"]
        t = now - 600 + stage * 2.0
        status = "done" if i < requests // 2 else "queued" if i < 3 * requests // 4 else "waiting"
        done = status == "done"
        reqs.append({
            "id": f"pr-{i:06d}", "inputs": inputs, "output": f"v{stage}_{j}", "status": status,
            "criteria": "latency", "objective": "latency" if j == 0 else "throughput",
            "group": f"g{stage}", "engine": f"http://engine-{j % 4}:30000" if done else None,
            "prompt_tokens": 400, "cached_tokens": 120 * (j % 3), "completion_tokens": 64,
            "queued_ms": 50.0 if done else None, "run_ms": 900.0 if done else None, "error": None,
            "criteria_effective": None, "created_at": now - 700,
            "ready_at": t if status != "waiting" else None, "started_at": t + 0.05 if done else None,
            "first_token_at": t + 0.2 if done else None, "finished_at": t + 0.95 if done else None,
        })
        names.append(f"v{stage}_{j}")
    variables = [{"name": "doc", "status": "ready", "error": None, "preview": "x", "chars": 1}]
    variables += [{"name": n, "status": "ready" if r["status"] == "done" else "pending",
                   "error": None, "preview": None, "chars": None} for n, r in zip(names, reqs)]
    path = [reqs[s * width]["id"] for s in range((requests + width - 1) // width)]
    return {"session": "synthetic", "requests": reqs, "variables": variables, "edges": [],
            "critical_path": path, "critical_path_s": 12.0, "prefix_groups": [], "now": now}


MEASURE = """
const [payload, done] = arguments;
const v = window.parrotView;
v.stop();
const t0 = performance.now();
const first = v.apply(payload);
v.flush();
const firstMs = performance.now() - t0;
const layoutMs = v.stats.lastLayoutMs;
const firstDagMs = v.dag.lastDrawMs;
// The next poll (parsed afresh, as fetch would) turns `done` more requests done: no
// relayout, a repaint.
const parseT = performance.now();
const next = JSON.parse(JSON.stringify(payload));
const jsonMs = performance.now() - parseT;
for (const r of next.requests.filter((q) => q.status !== 'done').slice(0, done)) {
  r.status = 'done'; r.engine = 'http://engine-0:30000'; r.started_at = r.ready_at || payload.now;
  r.first_token_at = r.started_at + 0.1; r.finished_at = r.started_at + 0.5;
}
const t1 = performance.now();
const update = v.apply(next);
const updateBreakdown = v.stats.breakdown;
v.flush();
const updateMs = performance.now() - t1;
// Panning at the fitted zoom, and at a readable zoom (labels drawn).
const frames = [];
for (let i = 0; i < 30; i++) { v.dag.panBy(3, 2); v.dag.draw(); frames.push(v.dag.lastDrawMs); }
v.dag.zoomAt(v.dag.cw / 2, v.dag.ch / 2, 1 / v.dag.scale);
const zoomed = [];
for (let i = 0; i < 30; i++) { v.dag.panBy(-5, 1); v.dag.draw(); zoomed.push(v.dag.lastDrawMs); }
const max = (a) => Math.max(...a);
const avg = (a) => a.reduce((x, y) => x + y, 0) / a.length;
return {
  first_structure: first.structure, update_structure: update.structure, update_changed: update.changed,
  nodes: v.model.nodes.length, edges: v.model.edges.length,
  rendered_requests: v.snapshot().requests.filter(r => r.status === 'done').length,
  first_apply_and_draw_ms: firstMs, layout_ms: layoutMs, first_dag_draw_ms: firstDagMs,
  update_apply_and_draw_ms: updateMs, json_roundtrip_ms: jsonMs, update_breakdown_ms: updateBreakdown,
  pan_frame_ms_avg: avg(frames), pan_frame_ms_max: max(frames),
  zoomed_frame_ms_avg: avg(zoomed), zoomed_frame_ms_max: max(zoomed),
};
"""


def measure(browser: Any, live: Stack, requests: int) -> dict[str, Any]:
    sid = "ui-size"
    r = httpx.put(f"{live.url}/v1/sessions/{sid}/variables/x", headers=KA, json={"value": "v"})
    assert r.status_code in (200, 409)
    link = httpx.post(f"{live.url}/v1/sessions/{sid}/view", headers=KA).json()
    set_headers(browser, {})
    browser.get(link["url"])
    wait_for(browser, "return document.body.dataset.state === 'live'")
    payload = synthetic(requests)
    out: dict[str, Any] = browser.execute_script(MEASURE, payload, requests // 10)
    out["requests"] = requests
    print(f"\nsession view, {requests} requests: " + json.dumps(
        {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))
    return out


def test_a_thousand_requests_render_and_update(browser: Any, live: Stack) -> None:
    out = measure(browser, live, 1000)
    assert out["nodes"] == 2 * 1000 + 1 and out["edges"] > 2 * 1000
    assert out["first_structure"] is True
    # A status poll is a repaint, not a relayout, and touches only what changed.
    assert out["update_structure"] is False and out["update_changed"] >= 100
    assert out["rendered_requests"] == 1000 // 2 + 100  # half were done, 100 more now


def record(kind: str, out: dict[str, Any]) -> None:
    """Keep the figures in results/ui-scale.json when PARROT_UPDATE_RESULTS=1."""
    if os.environ.get("PARROT_UPDATE_RESULTS") != "1":
        return
    path = RESULTS / "ui-scale.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(kind, {})[str(out["requests"])] = {
        k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("requests", [1000, 2500, 5000, 10000, 20000])
def test_size_synthetic(browser: Any, live: Stack, requests: int) -> None:
    """Layout, first draw, a status update and pan frames for large sessions (the payload
    is synthetic, so sizes beyond what the simulated engines run quickly can be measured)."""
    out = measure(browser, live, requests)
    assert out["nodes"] == 2 * requests + 1 and out["update_structure"] is False
    record("synthetic", out)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("requests", [1000])
def test_size_real_session(browser: Any, live: Stack, requests: int) -> None:
    """A real session of `requests` requests through the gateway (stages of 100, each reading
    two outputs of the stage before): the server's graph time, and the page's time from
    navigation to its first drawn frame. (The gateway reads the session's whole graph for
    each request whose output has consumers, O(n^2) in all: this takes minutes here.)"""
    import concurrent.futures

    sid, width = f"ui-real-{requests}", 100
    r = httpx.put(f"{live.url}/v1/sessions/{sid}/variables/doc", headers=KA, json={"value": "d"})
    assert r.status_code == 200

    def one(i: int) -> None:
        stage, j = divmod(i, width)
        inputs = [f"v{stage - 1}_{k}" for k in (j, (j + 1) % width)] if stage else ["doc"]
        submit(live.url, sid, "Step: " + " ".join("{{%s}}" % n for n in inputs), f"v{stage}_{j}", 2)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(requests)))
    submit_s = time.monotonic() - t0
    deadline = time.monotonic() + 700
    while True:
        t = time.monotonic()
        data = httpx.get(f"{live.url}/ui/api/sessions/{sid}", headers=KA, timeout=120)
        server_ms = (time.monotonic() - t) * 1000
        statuses = {q["status"] for q in data.json()["requests"]}
        if statuses <= {"done", "failed"} or time.monotonic() > deadline:
            break
        time.sleep(2)
    link = httpx.post(f"{live.url}/v1/sessions/{sid}/view", headers=KA).json()
    set_headers(browser, {})
    browser.get(link["url"])
    wait_for(browser, "return parrotView.stats.firstRenderMs !== null", timeout=120)
    stats = browser.execute_script("return parrotView.stats")
    out = {"requests": requests, "nodes": browser.execute_script("return parrotView.model.nodes.length"),
           "submit_s": submit_s, "graph_endpoint_ms": server_ms, "payload_bytes": len(data.content),
           "navigation_to_first_frame_ms": stats["firstRenderMs"], "page_fetch_ms": stats["lastFetchMs"],
           "page_apply_ms": stats["lastApplyMs"], "layout_ms": stats["lastLayoutMs"]}
    print(f"\nreal session, {requests} requests: " + json.dumps(
        {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))
    assert out["nodes"] == 2 * requests + 1
    record("real", out)
