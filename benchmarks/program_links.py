"""How often program inference links unrelated conversations (false links), and how
often it links a conversation's steps (recall). Pure, in memory, seconds.

    python -m benchmarks.program_links --conversations 20000 --seed 0

Generated traffic, built to be hard: every conversation draws one of a few
system prompts and usually one of a few dozen stock openers, so thousands share
their first messages exactly; the model is deterministic (temperature 0: the
same transcript always gets the same answer) and often answers with one of a
few stock replies ("Hello! How can I help you today? ..."), so identical
prefixes get identical answers; some users paste a stock reply as their own
message; a third of the conversations call tools (ids derived from the
transcript, as the simulated engine does). Follow-ups come from a small pool
too. Conversations run interleaved in random order, each step after its
predecessor was answered, through ``analysis.programs`` exactly as the gateway
runs it: ``--replicas`` gateway replicas, each request sent to one at random,
each replica deciding from its own ``ReplicaCache`` when it can and asking the
store (``ProgramTable``, the reference semantics of the Redis scripts)
otherwise; keys that turn ambiguous reach every replica's cache, as the DONE
script's PUBLISH does (here at once; in a deployment a few ms later, see
``gateway/programs.py``).

A request is *falsely linked* when the program it joins was started by a
different conversation; the rate is over all requests (and over linked ones).
Recall is the share of continuation steps (every step but a conversation's
first) that were linked to a program their own conversation started; the rest
started a new program (a conversation identical so far to another one cannot
be told apart, so it splits instead of merging).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from analysis.programs import (
    Link,
    ProgramRecord,
    ProgramTable,
    ReplicaCache,
    answer_keys,
    assistant_messages,
    identify,
)

SYSTEMS = (
    "You are a helpful assistant.",
    "You are a customer support agent for an online shop. Be polite and concise.",
    "You are a coding assistant. Answer with code where possible.",
    "You are a travel planner. Ask clarifying questions.",
    "You are a research agent with tools. Think step by step and use the tools when needed.",
)
OPENERS = ("Hi", "Hello", "Hey there", "Can you help me?", "I have a question.", "What can you do?",
           "Help", "Good morning", "Is anyone there?", "Thanks in advance") + tuple(
    f"Tell me about {t}" for t in ("rivers", "python", "the moon", "taxes", "coffee", "trains", "jazz",
                                   "bees", "volcanoes", "chess", "bread", "tides", "maps", "glass"))
FOLLOWUPS = ("Thanks!", "Tell me more.", "Can you elaborate?", "Why?", "Give me an example.", "OK",
             "Shorter please.", "What else?", "And then?", "Great, thanks. One more thing.")
STOCK = (
    "Hello! How can I help you today? Feel free to ask me anything you would like to know.",
    "I'm sorry, but I can't help with that request. Is there something else I can do for you?",
    "Sure! Could you give me a bit more detail about what you are looking for, so I can help?",
    "You're welcome! If you have any other questions, just let me know and I will be glad to help.",
)
WORDS = ("data model river stone light paper music garden signal memory order table bridge letter "
         "field voice travel price rule season trade island winter summer").split()


def _rng_of(*parts: Any) -> random.Random:
    return random.Random(blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                                 digest_size=8).digest())


def model(messages: list[dict[str, Any]], tools: bool) -> dict[str, Any]:
    """A deterministic chat model: the same transcript gets the same answer."""
    rng = _rng_of(messages, tools)
    last = messages[-1]
    if tools and last["role"] == "user" and rng.random() < 0.7:
        calls = [{"id": "call_%012x" % rng.getrandbits(48), "type": "function",
                  "function": {"name": rng.choice(("search", "calc", "weather")),
                               "arguments": json.dumps({"q": rng.choice(WORDS)})}}
                 for _ in range(rng.choice((1, 1, 2)))]
        return {"role": "assistant", "content": None, "tool_calls": calls}
    if rng.random() < 0.35:
        return {"role": "assistant", "content": rng.choice(STOCK)}
    return {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))}


@dataclass
class Conversation:
    cid: int
    tools: bool
    steps_left: int
    messages: list[dict[str, Any]] = field(default_factory=list)


def _new(cid: int, rng: random.Random) -> Conversation:
    system = rng.choice(SYSTEMS)
    opener = rng.choice(OPENERS) if rng.random() < 0.8 else f"My question {rng.getrandbits(32)}"
    c = Conversation(cid, system == SYSTEMS[-1] or rng.random() < 0.25, rng.randint(1, 8))
    c.messages = [{"role": "system", "content": system}, {"role": "user", "content": opener}]
    return c


def _advance(c: Conversation, answer: dict[str, Any], rng: random.Random) -> None:
    c.messages.append(answer)
    if answer.get("tool_calls"):
        for tc in answer["tool_calls"]:
            c.messages.append({"role": "tool", "tool_call_id": tc["id"], "content": rng.choice(WORDS)})
        return
    r = rng.random()
    if r < 0.05:
        text = rng.choice(STOCK)  # pasted: the same text some model answers are
    elif r < 0.7:
        text = rng.choice(FOLLOWUPS)
    else:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
    c.messages.append({"role": "user", "content": text})


def _place(table: ProgramTable, cache: ReplicaCache, q: Any, new_id: str, now: float) -> tuple[Link, bool]:
    """What ``gateway.programs.Programs.place`` does: the cache, a local new program, the store."""
    link = cache.decide("t", q, now)
    if link is not None:
        return link, True
    if not q.probes and q.hint is None:
        link = Link(new_id, "new", ProgramRecord(new_id, now, now, steps=1, links={"new": 1}))
        cache.remember("t", link.record, now)
        return link, True
    link = table.link(q, new_id, now)
    cache.remember("t", link.record, now)
    return link, False


def measure(conversations: int = 2000, seed: int = 0, concurrency: int = 200,
            replicas: int = 2) -> dict[str, Any]:
    """Run the generated traffic through inference; counts and rates (module docstring)."""
    rng = random.Random(seed)
    table = ProgramTable()
    caches = [ReplicaCache(ttl_s=1e12) for _ in range(replicas)]
    owner: dict[str, int] = {}  # program -> the conversation that started it
    started = 0
    live: list[Conversation] = []
    requests = linked = false = continuations = recalled = 0
    reasons: dict[str, int] = {}
    programs_of: dict[int, set[str]] = {}
    while started < conversations or live:
        while started < conversations and len(live) < concurrency:
            live.append(_new(started, rng))
            started += 1
        c = live[rng.randrange(len(live))]
        q = identify(c.messages)
        cache = caches[rng.randrange(replicas)]
        now = float(requests)
        link, local = _place(table, cache, q, f"p{requests}", now)
        requests += 1
        reasons[link.reason] = reasons.get(link.reason, 0) + 1
        owner.setdefault(link.program, c.cid)
        if link.reason != "new":
            linked += 1
            if owner[link.program] != c.cid:
                false += 1
        if c.cid in programs_of:
            continuations += 1
            recalled += link.reason != "new" and owner[link.program] == c.cid
        programs_of.setdefault(c.cid, set()).add(link.program)
        answer = model(c.messages, c.tools)
        keys = answer_keys(q, assistant_messages({"choices": [{"message": answer}]}))
        cache.answered("t", link.program, keys, 0, 0, 0, None, now)
        ambiguous = table.done(link.program, keys, 0, 0, 0, None, now,
                               (link.reason, q.user_key) if local else None)
        for each in caches:  # the DONE script publishes them to every replica
            each.ambiguous("t", ambiguous, now)
        c.steps_left -= 1
        if c.steps_left <= 0 and not answer.get("tool_calls"):
            live.remove(c)
        else:
            _advance(c, answer, rng)
    return {
        "conversations": conversations, "requests": requests, "linked": linked,
        "false_links": false,
        "false_link_rate": round(false / requests, 6) if requests else 0.0,
        "false_link_rate_of_linked": round(false / linked, 6) if linked else 0.0,
        "continuations": continuations,
        "recall": round(recalled / continuations, 6) if continuations else 1.0,
        "programs_per_conversation": round(sum(map(len, programs_of.values())) / max(1, len(programs_of)), 4),
        "reasons": reasons, "seed": seed, "concurrency": concurrency, "replicas": replicas,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.program_links", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=200, help="conversations in flight at once")
    p.add_argument("--replicas", type=int, default=2, help="gateway replicas, each with its own cache")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.conversations, args.seed, args.concurrency, args.replicas), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
