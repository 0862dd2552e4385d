"""Programs inferred by a running gateway from unmodified clients: the header, the
record in Redis, tenant scoping, replicas, engine affinity, faults, the switch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from common.serving import free_port
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(120)

KEY_A = "sk-alpha-programs-0001"
KEY_B = "sk-bravo-programs-0002"
SYSTEM = "You are a patient tutor. " * 20  # a shared system prompt of ~500 bytes


def sdk(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def chat(client: openai.OpenAI, turns: list[str], stream_last: bool = False,
         **extra: Any) -> list[str]:
    """A multi-turn chat, as an unmodified client writes it; the program id of each turn."""
    messages: list[Any] = [{"role": "system", "content": SYSTEM}]
    programs = []
    for i, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        if stream_last and i == len(turns) - 1:
            with client.chat.completions.with_streaming_response.create(
                    model=model_of(client), messages=messages, max_tokens=8, stream=True, **extra) as raw:
                programs.append(raw.headers.get("x-parrot-program"))
                text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=model_of(client), messages=messages, max_tokens=8, **extra)
            programs.append(raw.headers.get("x-parrot-program"))
            text = raw.parse().choices[0].message.content
        messages.append({"role": "assistant", "content": text})
    return programs


def model_of(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def program(url: str, pid: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}/v1/programs/{pid}", headers=headers, timeout=10)


def test_multi_turn_chat_is_one_program(stack: Stack) -> None:
    c = sdk(stack.url)
    a = chat(c, ["What is a tide?", "Why twice a day?", "And spring tides?"], stream_last=True)
    b = chat(c, ["What is a wave?", "And a tsunami?"])
    assert a[0] and len(set(a)) == 1, a
    assert b[0] and len(set(b)) == 1 and b[0] != a[0]
    # the same opener gets the same answer (deterministic engine): the conversations cannot
    # be told apart, so this one starts a program of its own instead of joining a's
    same = chat(c, ["What is a tide?", "Explain waves instead."])
    assert a[0] not in same and same[0] != same[1]
    body = program(stack.url, a[0]).json()
    assert body["object"] == "program" and body["id"] == a[0]
    assert body["steps"] == 3 and body["links"] == {"new": 1, "chain": 2}
    assert body["attained_tokens"] > 0 and body["usage"]["completion_tokens"] == 24
    assert [s["link"] for s in body["recent_steps"]] == ["new", "chain", "chain"]
    # the continuation steps ran where the conversation's prefix was cached
    steps = body["recent_steps"]
    assert {s["engine"] for s in steps} == {steps[0]["engine"]}
    assert all(s["cached_tokens"] > 0 for s in steps[1:])
    metrics = httpx.get(stack.url + "/metrics").text
    assert 'parrot_program_links_total{reason="chain"} 3.0' in metrics
    assert 'parrot_program_requests_total{result="new"} 4.0' in metrics


def test_unknown_program_and_bad_hint_are_openai_errors(stack: Stack) -> None:
    r = program(stack.url, "prog_doesnotexist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "program_not_found"
    r = httpx.post(stack.url + "/v1/chat/completions", headers={"X-Parrot-Program": "bad id!"},
                   json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Parrot-Program"


def test_hint_names_the_program(stack: Stack) -> None:
    client = sdk(stack.url)
    for turn in ("one", "two"):
        raw = client.chat.completions.with_raw_response.create(
            model=model_of(client), messages=[{"role": "user", "content": f"unrelated {turn}"}], max_tokens=2,
            extra_headers={"X-Parrot-Program": "my-batch-7"})
        assert raw.headers["x-parrot-program"] == "my-batch-7"
    assert program(stack.url, "my-batch-7").json()["links"] == {"hint": 2}


@pytest.fixture
def tenants(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  {KEY_A}: {{tenant: alpha}}\n  {KEY_B}: {{tenant: bravo}}\n")
    s = start_stack(redis_url, engines=1, api_keys=str(keys))
    yield s
    s.stop()


def test_programs_are_tenant_scoped_and_users_link(tenants: Stack) -> None:
    a = sdk(tenants.url, KEY_A)
    first = chat(a, ["hello from alice"], user="alice")[0]
    again = chat(a, ["a new conversation"], user="alice")[0]
    assert first and again == first  # the same user: the same program
    assert program(tenants.url, first, KEY_A).json()["links"] == {"new": 1, "user": 1}
    other = program(tenants.url, first, KEY_B)
    assert other.status_code == 404 and "alpha" not in other.text
    # the same transcript from another tenant never joins alpha's program
    assert chat(sdk(tenants.url, KEY_B), ["hello from alice"], user="alice")[0] != first


def test_replicas_share_programs(redis_url: str) -> None:
    with start_stack(redis_url, engines=2, replicas=2) as s:
        urls = [s.url, s.extra_gateways[0].url]
        messages: list[Any] = [{"role": "system", "content": SYSTEM}]
        seen = []
        for i in range(4):
            messages.append({"role": "user", "content": f"turn {i} of a chat spread over replicas"})
            client = sdk(urls[i % 2])
            raw = client.chat.completions.with_raw_response.create(
                model=model_of(client), messages=messages, max_tokens=6)
            seen.append(raw.headers["x-parrot-program"])
            messages.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
        assert len(set(seen)) == 1
        body = program(urls[1], seen[0]).json()
        assert body["steps"] == 4 and body["links"]["chain"] == 3
        # every step ran where the previous one did (the record's engine, on either replica)
        assert len({st["engine"] for st in body["recent_steps"]}) == 1
        # two identical conversations answered on different replicas: the second one's next
        # step, sent where the first was answered, must not join the first (every replica
        # hears that their shared key is ambiguous)
        opener: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "same"}]
        first = []
        for url in urls:
            client = sdk(url)
            raw = client.chat.completions.with_raw_response.create(
                model=model_of(client), messages=opener, max_tokens=6)
            first.append((raw.headers["x-parrot-program"], raw.parse().choices[0].message.content))
        assert first[0][1] == first[1][1] and first[0][0] != first[1][0]
        time.sleep(0.3)
        client = sdk(urls[0])
        nxt = client.chat.completions.with_raw_response.create(
            model=model_of(client), max_tokens=6, messages=[
                *opener, {"role": "assistant", "content": first[1][1]}, {"role": "user", "content": "go"}])
        assert nxt.headers["x-parrot-program"] not in (first[0][0], first[1][0])


def test_switched_off_and_redis_down_schedule_as_before(redis_url: str) -> None:
    with start_stack(redis_url, engines=1, infer_programs=False) as s:
        assert chat(sdk(s.url), ["hi", "again"]) == [None, None]
    dead = f"redis://127.0.0.1:{free_port()}"
    with start_stack(dead, engines=1) as s:
        # Redis down: a chat this replica answered still continues from its own cache ...
        ids = chat(sdk(s.url), ["still answered", "twice"])
        assert ids[0] and ids[0] == ids[1]
        # ... and a request only Redis could place is scheduled as before, and answered
        history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "from elsewhere"},
                   {"role": "user", "content": "go on"}]
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": history, "max_tokens": 2})
        assert r.status_code == 200 and "x-parrot-program" not in r.headers
        text = httpx.get(s.url + "/metrics").text
        assert 'parrot_program_requests_total{result="unplaced"} 1.0' in text
        assert 'parrot_program_store_errors_total{op="link"} 1.0' in text


def test_responses_conversation_and_generate_hint(stack: Stack) -> None:
    """A Responses API conversation (previous_response_id) is one program; /generate only
    joins one when it is named."""
    client = sdk(stack.url)
    model = model_of(client)
    first = client.responses.with_raw_response.create(
        model=model, input="Tell me about tides, please.", max_output_tokens=8)
    second = client.responses.with_raw_response.create(
        model=model, input="And waves?", max_output_tokens=8, previous_response_id=first.parse().id)
    pid = first.headers["x-parrot-program"]
    assert second.headers["x-parrot-program"] == pid
    assert program(stack.url, pid).json()["links"] == {"new": 1, "chain": 1}
    r = httpx.post(stack.url + "/generate", headers={"X-Parrot-Program": pid},
                   json={"text": "raw prompt", "sampling_params": {"max_new_tokens": 4}})
    assert r.status_code == 200 and r.headers["x-parrot-program"] == pid
    plain = httpx.post(stack.url + "/generate",
                       json={"text": "raw", "sampling_params": {"max_new_tokens": 2}})
    assert plain.status_code == 200 and "x-parrot-program" not in plain.headers
