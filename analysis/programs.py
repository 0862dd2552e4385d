"""Programs inferred from plain traffic: which earlier request a new one continues. Pure.

An unmodified client (an OpenAI SDK tool loop, a LangGraph ReAct agent, a
multi-turn chat, an AutoGen-style group chat) says nothing about its
application, but its requests betray it: each step re-sends the transcript so
far, the previous answer included. A *program* is such a run; this module
decides, from a request's messages alone, which program it continues.

Identity, without a tokenizer: every message is canonicalised (role, content
text, tool calls with their JSON arguments re-serialised, tool_call_id; ``name``
and fields clients add or drop, such as ``refusal: null``, are ignored; a null
content equals an empty one) and hashed in a chain, ``h_k = H(h_{k-1} ||
canon(m_k))``. When a request with messages ``m_1..m_n`` is answered with
``a``, the store learns these keys, each naming the request's program:

* ``chain``: ``H(h_n || canon(a))``, the transcript a continuation starts with;
* ``tool``: every tool call id in ``a`` (a ``role: tool`` message answers it);
* ``content``: the role-free text of ``a`` when at least ``MIN_CONTENT_BYTES``
  long (in a group chat the other agents see it as a ``user`` message with a
  ``name``, so the chain of their requests never matches).

A new request is probed against them, strongest evidence first: an explicit
``X-Parrot-Program`` hint; the chain at each assistant message, longest
first; the ids of its tool messages, latest first; the content of its latest
non-system messages; finally its ``user`` field (the program that user's
previous request belonged to). The first hit wins; none: a new program.

False links: a key two programs write (two conversations identical up to and
including an answer, e.g. the same opener at temperature 0) is marked
``AMBIGUOUS`` and links nobody, so identical prefixes never merge unrelated
conversations; what remains is content equal by chance to another program's
answer (at least 64 bytes) and a shared ``user``. ``ProgramTable`` is the
reference semantics of the store (``gateway/programs_store.py`` runs the same
rules as Lua in Redis; a property test keeps them equal) and is what
``benchmarks/program_links.py`` measures the false-link rate with.

Attained service (for least-attained-service scheduling) is the tokens the
engines computed for the program: uncached prompt tokens plus completion
tokens of every finished step, from the engines' own usage reports.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from typing import Any

import orjson

from .messages import content_text

__all__ = [
    "AMBIGUOUS",
    "KINDS",
    "Link",
    "Probe",
    "ProgramRecord",
    "ProgramTable",
    "ReplicaCache",
    "Query",
    "answer_keys",
    "assistant_messages",
    "canonical_message",
    "chain_digests",
    "identify",
]

AMBIGUOUS = "*"
KINDS = ("hint", "chain", "tool", "content", "user")
NEW = "new"
MIN_CONTENT_BYTES = 64
MAX_CHAIN_PROBES = 16
MAX_TOOL_PROBES = 16
MAX_CONTENT_PROBES = 4
CONTENT_WINDOW = 8  # content probes look at the latest messages only
_DIGEST = 8
_SEP, _END, _PART = b"\x1f", b"\x1e", b"\x1d"


# ------------------------------------------------------------------ canonical form


def canonical_args(args: Any) -> bytes:
    """Tool-call arguments as canonical JSON (clients re-serialise them: LangChain parses
    and re-dumps with spaces); a string that is not JSON stays as it is."""
    if isinstance(args, str):
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            return args.strip().encode()
    try:
        return orjson.dumps(args, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(args, sort_keys=True, separators=(",", ":"), default=str).encode()


def _content(content: Any) -> str:
    """Text of a content; non-text parts (images, audio) count by their payload."""
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type", "text") != "text":
                kind = str(part.get("type"))
                out.append("\x1c" + kind + json.dumps(part.get(kind), sort_keys=True, default=str))
            else:
                out.append(content_text([part]))
        return "".join(out)
    return content_text(content)


def _calls(message: Mapping[str, Any], with_ids: bool = True) -> list[bytes]:
    out = []
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for c in calls:
            if not isinstance(c, Mapping):
                out.append(repr(c).encode())
                continue
            fn = c.get("function") if isinstance(c.get("function"), Mapping) else {}
            head = str(c.get("id") or "") if with_ids else ""
            out.append(_SEP.join((head.encode(), str(fn.get("name", "")).encode(),
                                  canonical_args(fn.get("arguments")))))
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping):
        out.append(b"fc" + _SEP + str(legacy.get("name", "")).encode() + _SEP
                   + canonical_args(legacy.get("arguments")))
    return out


def canonical_message(message: Any) -> bytes:
    """Canonical bytes of one chat message (see the module docstring)."""
    if type(message) is not dict:
        if not isinstance(message, Mapping):
            return repr(message).encode() + _END
        message = dict(message)
    content = message.get("content")
    text = content if type(content) is str else _content(content)
    head = b"%s\x1f%s" % (str(message.get("role", "")).encode(), text.encode())
    if "tool_calls" not in message and "tool_call_id" not in message and "function_call" not in message:
        return head + _END  # the common case, kept fast: one format, no lists
    parts = [head]
    for call in _calls(message):
        parts += [_PART, call]
    tcid = message.get("tool_call_id")
    if tcid is not None:
        parts += [_PART, b"id", _SEP, str(tcid).encode()]
    parts.append(_END)
    return b"".join(parts)


def _h(*chunks: bytes) -> bytes:
    h = blake2b(digest_size=_DIGEST)
    for c in chunks:
        h.update(c)
    return h.digest()


def chain_digests(messages: Sequence[Any]) -> list[bytes]:
    """``h_1..h_n``: digest ``k`` names messages ``1..k`` (one running hash over their
    canonical bytes, read at every message boundary; stable across processes)."""
    return _scan(messages)[1]


def _scan(messages: Sequence[Any]) -> tuple[list[bytes], list[bytes]]:
    """Canonical bytes of every message, and the digest of the transcript up to each."""
    h = blake2b(digest_size=_DIGEST)
    canon: list[bytes] = []
    out: list[bytes] = []
    for m in messages:
        c = canonical_message(m)
        canon.append(c)
        h.update(c)
        out.append(h.copy().digest())
    return canon, out


def _chain_key(before: bytes, answer: bytes) -> str:
    """Key of a transcript (digest ``before``) followed by an answer (canonical bytes)."""
    return _key("chain", _h(b"a", before, answer))


def _key(kind: str, digest: bytes) -> str:
    return kind[0] + ":" + digest.hex()


def _content_key(message: Mapping[str, Any]) -> str | None:
    text = _content(message.get("content"))
    data = text.encode()
    return _key("content", _h(b"o", data)) if len(data) >= MIN_CONTENT_BYTES else None


def _tool_key(call_id: Any) -> str:
    return _key("tool", _h(b"t", str(call_id).encode()))


def _user_key(user: str) -> str:
    return _key("user", _h(b"u", user.encode()))


# ------------------------------------------------------------------ a request's question


@dataclass(frozen=True)
class Probe:
    """One key to look up, and what a hit on it means."""

    kind: str  # one of KINDS
    key: str


@dataclass(frozen=True)
class Query:
    """What inference asks the store about one request, and what its answer will add."""

    probes: tuple[Probe, ...] = ()
    hint: str | None = None  # X-Parrot-Program: the program is named, nothing is looked up
    user_key: str | None = None  # the request's user: remembered as that user's latest program
    tail: bytes | None = None  # h_n: the whole transcript, extended by the answer (chat only)


def identify(messages: Sequence[Any] | None, *, user: str | None = None,
             hint: str | None = None) -> Query:
    """The probes of a request, strongest first (module docstring). ``messages`` is None
    for prompt-only routes (completions): only the hint and the user can link them."""
    uk = _user_key(user) if user else None
    if not messages:
        return Query((Probe("user", uk),) if uk and not hint else (), hint, uk, None)
    canon, digests = _scan(messages)
    if hint:
        return Query((), hint, uk, digests[-1])
    chain: list[Probe] = []
    tools: list[Probe] = []
    contents: list[Probe] = []
    n = len(messages)
    for i in range(n - 1, -1, -1):
        m = messages[i]
        if type(m) is not dict and not isinstance(m, Mapping):
            continue
        role = m.get("role")
        if role == "assistant" and len(chain) < MAX_CHAIN_PROBES:
            chain.append(Probe("chain", _chain_key(digests[i - 1] if i else b"", canon[i])))
        elif role == "tool" and m.get("tool_call_id") is not None and len(tools) < MAX_TOOL_PROBES:
            tools.append(Probe("tool", _tool_key(m["tool_call_id"])))
        if role != "system" and len(contents) < MAX_CONTENT_PROBES and n - i <= CONTENT_WINDOW:
            k = _content_key(m)
            if k is not None:
                contents.append(Probe("content", k))
        if len(chain) >= MAX_CHAIN_PROBES and len(tools) >= MAX_TOOL_PROBES:
            break
    if len(contents) == 1 and not chain and not tools and _first_turn(messages):
        # A conversation's first turn (one message besides the system prompt) continues
        # nothing: quoting another program's answer as its only message is a new
        # program's start, and asking the store about it would cost every fresh request
        # a round trip.
        contents = []
    probes = [*chain, *tools, *contents]
    if uk:
        probes.append(Probe("user", uk))
    return Query(tuple(probes), None, uk, digests[-1])


def _first_turn(messages: Sequence[Any]) -> bool:
    return sum(1 for m in messages if not (isinstance(m, Mapping) and m.get("role") == "system")) <= 1


def assistant_messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The answer(s) of a chat.completion response, one per choice."""
    out = []
    for c in body.get("choices") or ():
        msg = c.get("message") if isinstance(c, Mapping) else None
        if isinstance(msg, Mapping):
            out.append(msg)
    return out


def answer_keys(query: Query, answers: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The keys the answers make linkable: chain, tool call ids, content (deduplicated)."""
    keys: dict[str, None] = {}
    for a in answers:
        msg = {**a, "role": "assistant"}
        if query.tail is not None:
            keys[_chain_key(query.tail, canonical_message(msg))] = None
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for c in calls:
                if isinstance(c, Mapping) and c.get("id"):
                    keys[_tool_key(c["id"])] = None
        ck = _content_key(msg)
        if ck is not None:
            keys[ck] = None
    return tuple(keys)


# ------------------------------------------------------------------ records and the reference store


@dataclass
class ProgramRecord:
    """One program as every replica sees it."""

    id: str
    started: float
    last_seen: float
    steps: int = 0  # requests linked to it (counted when they arrive)
    prompt_tokens: int = 0  # of finished steps, as the engines reported
    cached_tokens: int = 0
    completion_tokens: int = 0
    last_engine: str | None = None
    context_tokens: int = 0  # prompt + completion of its latest finished step
    links: dict[str, int] = field(default_factory=dict)  # how its steps were linked (KINDS + "new")

    @property
    def attained(self) -> int:
        """Service received so far: uncached prompt + completion tokens."""
        return max(0, self.prompt_tokens - self.cached_tokens) + self.completion_tokens

    def finish_step(self, prompt: int, cached: int, completion: int, engine: str | None,
                    now: float) -> None:
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += completion
        if engine:
            self.last_engine = engine
        self.context_tokens = prompt + completion
        self.last_seen = now


@dataclass(frozen=True)
class Link:
    """Where a request went: its program, why (``new`` or one of KINDS), the record after."""

    program: str
    reason: str
    record: ProgramRecord


class ProgramTable:
    """The store's rules over dictionaries, without expiry: one tenant's keys and records.

    ``link`` (when a request arrives) and ``done`` (when it was answered) are what
    the Redis scripts ``LINK`` and ``DONE`` do, in one round trip each."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.records: dict[str, ProgramRecord] = {}

    def lookup(self, query: Query) -> tuple[str, str] | None:
        """(program, kind) of the first probe that names one program, if any."""
        for p in query.probes:
            v = self.keys.get(p.key)
            if v is not None and v != AMBIGUOUS:
                return v, p.kind
        return None

    def _record(self, pid: str, now: float) -> ProgramRecord:
        rec = self.records.get(pid)
        if rec is None:
            rec = self.records[pid] = ProgramRecord(pid, now, now)
        return rec

    def count(self, pid: str, reason: str, user_key: str | None, now: float) -> ProgramRecord:
        """Count one step of ``pid``, linked for ``reason``."""
        rec = self._record(pid, now)
        rec.steps += 1
        rec.last_seen = now
        rec.links[reason] = rec.links.get(reason, 0) + 1
        if user_key:
            self.keys[user_key] = pid
        return rec

    def link(self, query: Query, new_id: str, now: float) -> Link:
        if query.hint:
            pid, reason = query.hint, "hint"
        else:
            pid, reason = self.lookup(query) or (new_id, NEW)
        rec = self.count(pid, reason, query.user_key, now)
        return Link(pid, reason, replace(rec, links=dict(rec.links)))

    def learn(self, pid: str, keys: Iterable[str]) -> tuple[str, ...]:
        """Each key names ``pid`` unless another program already claimed it (then nobody);
        returns the keys that name nobody now."""
        ambiguous = []
        for k in keys:
            v = self.keys.get(k)
            if v is None or v == pid:
                self.keys[k] = pid
            else:
                self.keys[k] = AMBIGUOUS
                ambiguous.append(k)
        return tuple(ambiguous)

    def done(self, pid: str, keys: Iterable[str], prompt: int, cached: int, completion: int,
             engine: str | None, now: float, step: tuple[str, str | None] | None = None
             ) -> tuple[str, ...]:
        """Record an answered step; ``step`` = (reason, user key) counts it first, for a
        step a replica placed from its own cache (it did not ``link``). Returns the keys
        that turned out ambiguous."""
        if step is not None:
            self.count(pid, step[0], step[1], now)
        ambiguous = self.learn(pid, keys)
        self._record(pid, now).finish_step(prompt, cached, completion, engine, now)
        return ambiguous


class ReplicaCache:
    """What one replica knows without asking the store, so most steps cost no round trip.

    It holds the keys its own answers wrote (with the store's ambiguity rule applied to
    what it has seen) and the records it last saw, per tenant, for ``ttl_s``. It
    decides a request alone only when the request's *strongest* probe is such a key
    (the previous step of a loop or chat was answered here): the store would name the
    same program, unless another replica has since seen an identical transcript
    answered (the store would then say ambiguous; the false-link measurement runs with
    several replicas to count that). A hinted request is decided alone when its
    record is here. Anything else asks the store."""

    def __init__(self, ttl_s: float = 900.0, max_keys: int = 200_000, max_records: int = 50_000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self.max_records = max_records
        self._keys: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._records: OrderedDict[tuple[str, str], tuple[ProgramRecord, float]] = OrderedDict()

    def _get(self, table: OrderedDict[Any, Any], key: Any, now: float) -> Any:
        hit = table.get(key)
        if hit is None:
            return None
        if now - hit[1] > self.ttl_s:
            del table[key]
            return None
        return hit[0]

    @staticmethod
    def _put(table: OrderedDict[Any, Any], key: Any, value: Any, now: float, limit: int) -> None:
        table[key] = (value, now)
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)

    def decide(self, tenant: str, query: Query, now: float) -> Link | None:
        if query.hint:
            pid, reason = query.hint, "hint"
        elif query.probes:
            pid = self._get(self._keys, (tenant, query.probes[0].key), now)
            reason = query.probes[0].kind
            if pid is None or pid == AMBIGUOUS:
                return None
        else:
            return None
        rec = self._get(self._records, (tenant, pid), now)
        if rec is None:
            return None
        rec.steps += 1
        rec.last_seen = now
        rec.links[reason] = rec.links.get(reason, 0) + 1
        return Link(pid, reason, replace(rec, links=dict(rec.links)))

    def remember(self, tenant: str, rec: ProgramRecord, now: float) -> None:
        self._put(self._records, (tenant, rec.id), replace(rec, links=dict(rec.links)), now,
                  self.max_records)

    def answered(self, tenant: str, pid: str, keys: Iterable[str], prompt: int, cached: int,
                 completion: int, engine: str | None, now: float) -> None:
        """This replica answered a step of ``pid``: its keys and its usage."""
        for k in keys:
            old = self._get(self._keys, (tenant, k), now)
            self._put(self._keys, (tenant, k), pid if old in (None, pid) else AMBIGUOUS, now,
                      self.max_keys)
        rec = self._get(self._records, (tenant, pid), now)
        if rec is not None:
            rec.finish_step(prompt, cached, completion, engine, now)

    def forget_keys(self) -> None:
        """Drop every key (news of ambiguous keys may have been missed)."""
        self._keys.clear()

    def ambiguous(self, tenant: str, keys: Iterable[str], now: float) -> None:
        """The store says these keys name nobody (another program claimed them too)."""
        for k in keys:
            self._put(self._keys, (tenant, k), AMBIGUOUS, now, self.max_keys)
