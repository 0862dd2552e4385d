"""Benchmark workloads as data: each application is a DAG of chat steps. Pure.

A step's prompt names its inputs as ``{{name}}`` placeholders (the gateway
fills them server-side; client-side systems substitute them themselves) and
its output is the variable named like the step. Shapes and sizes follow the
Parrot evaluation (``/work/shared/WORKLOADS.md``); ``size="small"`` scales
counts and lengths down so CI runs in seconds. Prompt text is synthetic,
deterministic for a seed, and sized with the shared offline tokenizer, so
nothing is downloaded. Arrival times are in *engine* seconds (the runner
multiplies them by the engines' time-scale).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from analysis.tokenizer import get_tokenizer

from .agents import SIZES as AGENT_SIZES
from .agents import make_script, script_shape

WORKLOADS = ("chain", "map-reduce", "shared-prompt", "multi-agent", "mixed", "mixed-heavy", "agents")
SIZES = ("small", "full")
# Workloads whose apps can be drawn one by one, for closed loops and rate sweeps (``mixed``
# is a fixed timeline from the paper: a chat stream and batch apps at set offsets).
SWEEPABLE = ("chain", "map-reduce", "shared-prompt", "multi-agent", "mixed-heavy", "agents")
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]{0,63})\}\}")

# Common English words, each one token with a leading space (tests/test_bench.py checks).
_WORDS = (
    "the system model data time people year way day thing world life hand part "
    "child eye woman place work week case point government company number group "
    "problem fact water money story month lot right study book word business issue "
    "side kind head house service friend father power hour game line end member law "
    "car city community name president team minute idea body information back parent "
    "face others level office door health person art war history party result change "
    "morning reason research girl guy moment air teacher force education report market "
    "energy value plan design network engine cache request server answer question light "
    "river stone paper window music garden signal memory process order market table "
    "bridge letter field voice travel price rule season trade island winter summer "
    "careful quick simple early strong local small large public private common recent "
    "makes takes gives shows builds reads writes moves keeps finds leaves brings holds"
).split()


def placeholders(text: str) -> list[str]:
    """Names of the ``{{name}}`` placeholders in ``text``, in order, without repeats."""
    seen: dict[str, None] = {}
    for m in _PLACEHOLDER.finditer(text):
        seen.setdefault(m.group(1), None)
    return list(seen)


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Client-side placeholder filling (what the gateway does server-side)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@lru_cache(maxsize=4096)
def synthetic_text(tokens: int, seed: int) -> str:
    """Deterministic word salad of ``tokens`` tokens under the shared tokenizer, built
    without tokenizing: every word of ``_WORDS`` is one token after a space and a period
    one more (a test checks both), so it costs ~0.1 ms per 1,000 tokens, and closed
    loops can build hundreds of apps before a run. Every 12th word ends a sentence."""
    if tokens <= 0:
        return ""
    n = tokens
    while n + n // 12 > tokens:  # n words and n // 12 periods
        n -= 1
    words = random.Random(seed).choices(_WORDS, k=n)
    for i in range(11, n, 12):
        words[i] += "."
    return " ".join(words)


def count_tokens(text: str) -> int:
    return len(get_tokenizer().encode(text))


@dataclass(frozen=True)
class Step:
    """One LLM call. ``name`` is also its output variable."""

    name: str
    user: str
    max_tokens: int
    system: str | None = None
    criteria: str = "latency"
    stage: str = ""
    """Label for charts (map, reduce, refine, ...)."""
    stream: bool = False
    """Stream the answer (chat tenants: time to first token is measured)."""

    inputs: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The names of the steps it reads, found once when built: scanning a 1,000-token
    prompt costs ~7 us, paid per step at an app's start by the client orchestrator."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(placeholders((self.system or "") + "\n" + self.user)))

    def messages(self, values: Mapping[str, str] | None = None) -> list[dict[str, str]]:
        """Chat messages; with ``values`` the placeholders are filled client-side."""

        def fill(s: str) -> str:
            return substitute(s, values) if values is not None else s

        out = []
        if self.system is not None:
            out.append({"role": "system", "content": fill(self.system)})
        out.append({"role": "user", "content": fill(self.user)})
        return out


@dataclass(frozen=True)
class App:
    """One application instance: a DAG of steps; the client waits for ``finals``."""

    kind: str
    instance: str
    steps: tuple[Step, ...]
    finals: tuple[str, ...]
    tenant: str = "default"
    shape: str = ""
    """Instances with equal shape have equal step lengths (the bound is measured once)."""
    script: Any = None
    """``agents.Script``: a program an unmodified client runs turn by turn (its transcript
    grows with every answer), instead of a DAG of fixed prompts; ``steps`` then only
    name its turns."""

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def output_tokens(self) -> int:
        if self.script is not None:
            return int(self.script.output_tokens)
        return sum(self.step(f).max_tokens for f in self.finals)


@dataclass(frozen=True)
class Arrival:
    at_s: float
    """Engine seconds after the workload starts."""
    app: App


@dataclass
class Workload:
    name: str
    size: str
    arrivals: list[Arrival]
    params: dict[str, object] = field(default_factory=dict)

    @property
    def apps(self) -> list[App]:
        return [a.app for a in self.arrivals]

    @property
    def requests(self) -> int:
        return sum(len(a.app.steps) for a in self.arrivals)


def topo_order(steps: Iterable[Step]) -> list[Step]:
    """Steps ordered so every input is produced earlier; ValueError on a cycle."""
    steps = list(steps)
    names = {s.name for s in steps}
    done: set[str] = set()
    out: list[Step] = []
    while len(out) < len(steps):
        ready = [s for s in steps if s.name not in done and all(
            i in done or i not in names for i in s.inputs)]
        if not ready:
            raise ValueError("dependency cycle")
        for s in ready:
            done.add(s.name)
            out.append(s)
    return out


def critical_path(app: App, cost: Mapping[str, float]) -> tuple[float, list[str]]:
    """Longest path through ``app`` weighted by per-step ``cost`` (seconds)."""
    finish: dict[str, float] = {}
    prev: dict[str, str | None] = {}
    names = {s.name for s in app.steps}
    for s in topo_order(app.steps):
        deps = [i for i in s.inputs if i in names]
        best = max(deps, key=lambda d: finish[d], default=None)
        finish[s.name] = (finish[best] if best else 0.0) + cost[s.name]
        prev[s.name] = best
    end = max(app.finals, key=lambda f: finish[f])
    path: list[str] = []
    cur: str | None = end
    while cur is not None:
        path.append(cur)
        cur = prev[cur]
    return finish[end], path[::-1]


# ---------------------------------------------------------------- sizes

_SIZES: dict[str, dict[str, dict[str, float]]] = {
    "chain": {
        "full": {"chunks": 20, "chunk_tokens": 650, "out": 50},
        "small": {"chunks": 6, "chunk_tokens": 256, "out": 24},
    },
    "map-reduce": {
        "full": {"chunks": 16, "chunk_tokens": 1000, "out": 50},
        "small": {"chunks": 8, "chunk_tokens": 400, "out": 32},
    },
    "multi-agent": {
        "full": {"fanout": 8, "rounds": 10, "preamble": 1500, "design": 600, "file": 300, "review": 200},
        "small": {"fanout": 4, "rounds": 4, "preamble": 400, "design": 96, "file": 64, "review": 48},
    },
    "shared-prompt": {
        "full": {"requests": 500, "rate": 8.0, "scale": 1.0},
        "small": {"requests": 24, "rate": 4.0, "scale": 0.25},
    },
    "mixed": {
        "full": {"chats": 40, "chat_rate": 1.0, "batch_apps": 9, "batch_start": 15.0,
                 "chunks": 16, "chunk_tokens": 1024, "out": 50, "chat_max_prompt": 1024,
                 "chat_max_total": 2048},
        "small": {"chats": 10, "chat_rate": 2.0, "batch_apps": 3, "batch_start": 1.0,
                  "chunks": 6, "chunk_tokens": 400, "out": 32, "chat_max_prompt": 384,
                  "chat_max_total": 640},
    },    # Batch tenants (map-reduce and multi-agent apps of the same size, alternating) offered
    # near capacity, plus a latency tenant of streamed chats at ``chat_rate`` per second.
    # ``batch_rate`` is only a nominal default: the runner offers a fraction of capacity.
    "mixed-heavy": {
        "full": {"batch_apps": 40, "batch_rate": 0.3, "chat_rate": 1.0, "min_chats": 20,
                 "chat_max_prompt": 1024, "chat_max_total": 2048},
        "small": {"batch_apps": 16, "batch_rate": 2.0, "chat_rate": 2.0, "min_chats": 10,
                  "chat_max_prompt": 384, "chat_max_total": 640},
    },
}
_SIZES["agents"] = {size: {**AGENT_SIZES[size], "apps": 40 if size == "full" else 12,
                           "rate": 1.0 if size == "full" else 4.0} for size in AGENT_SIZES}
# Chat lengths are drawn from a ShareGPT-like log-normal and snapped to these buckets, so
# that the critical-path bound is measured for a handful of shapes, not one per chat.
CHAT_PROMPT_BUCKETS = (64, 128, 256, 512, 1024)
CHAT_OUTPUT_BUCKETS = (32, 64, 128, 256, 512)

# (system prompt tokens, query tokens, output tokens) of four GPTs-like apps (Parrot eval).
GPTS_APPS = ((7437, 7, 704), (1116, 8, 89), (1694, 4, 631), (2031, 4, 416))


def size_params(workload: str, size: str) -> dict[str, float]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    return dict(_SIZES[workload][size])


def _seed(*parts: object) -> int:
    return random.Random("/".join(map(str, parts))).getrandbits(48)


# ---------------------------------------------------------------- app builders

def chain_app(instance: str, seed: int, chunks: int, chunk_tokens: int, out: int,
              tenant: str = "default", criteria: str = "latency") -> App:
    """Chain summarization: step k refines summary k-1 with chunk k."""
    steps = []
    for k in range(chunks):
        chunk = synthetic_text(chunk_tokens, _seed(seed, instance, "chunk", k))
        if k == 0:
            user = f"Summarize the following part of a document.\n\nPart 1:\n{chunk}"
        else:
            user = (f"Refine the existing summary with the next part of the document.\n\n"
                    f"Existing summary:\n{{{{s{k - 1}}}}}\n\nPart {k + 1}:\n{chunk}")
        steps.append(Step(f"s{k}", user, out, criteria=criteria, stage="refine"))
    return App("chain", instance, tuple(steps), (f"s{chunks - 1}",), tenant,
               shape=f"chain:{chunks}x{chunk_tokens}:{out}")


def map_reduce_app(instance: str, seed: int, chunks: int, chunk_tokens: int, out: int,
                   tenant: str = "default", criteria: str = "latency") -> App:
    """Map-reduce summarization: one map per chunk, one reduce over every summary."""
    steps = []
    for i in range(chunks):
        chunk = synthetic_text(chunk_tokens, _seed(seed, instance, "chunk", i))
        steps.append(Step(f"m{i}", f"Summarize this part of a document in a few sentences.\n\n{chunk}",
                          out, criteria=criteria, stage="map"))
    listing = "\n".join(f"Summary {i + 1}: {{{{m{i}}}}}" for i in range(chunks))
    steps.append(Step("reduce", f"Combine these partial summaries into one summary.\n\n{listing}",
                      out, criteria=criteria, stage="reduce"))
    return App("map-reduce", instance, tuple(steps), ("reduce",), tenant,
               shape=f"map-reduce:{chunks}x{chunk_tokens}:{out}")


def multi_agent_app(instance: str, seed: int, fanout: int, rounds: int, preamble: int,
                    design: int, file: int, review: int, tenant: str = "default",
                    criteria: str = "latency") -> App:
    """MetaGPT-like software team: architect, then programmers, then reviewers and
    revisers alternating; each round's prompts share a long prefix (task, design,
    every current file) and end with a per-file suffix; outputs feed later rounds."""
    task = synthetic_text(int(preamble), _seed(seed, instance, "task"))
    system = ("You are part of a software team. Project brief and conventions follow.\n\n" + task)
    steps = [Step("design", "Write the architecture and the interface of every source file.",
                  int(design), system=system, criteria=criteria, stage="architect")]
    current = [None] * int(fanout)  # current variable of each file
    for r in range(1, int(rounds)):
        kind = "code" if r == 1 else ("review" if r % 2 == 0 else "revise")
        files = "\n\n".join(f"File {i}:\n{{{{{v}}}}}" for i, v in enumerate(current) if v)
        prefix = "Design:\n{{design}}\n\n" + (f"Current files:\n{files}\n\n" if files else "")
        new = list(current)
        for i in range(int(fanout)):
            if kind == "code":
                name, suffix, n = f"f{i}_r{r}", f"Task: write source file {i} following the design.", file
            elif kind == "review":
                name, suffix, n = f"rv{i}_r{r}", f"Task: review file {i}; list concrete defects.", review
            else:
                name, n = f"f{i}_r{r}", file
                suffix = f"Review of file {i}:\n{{{{rv{i}_r{r - 1}}}}}\n\nTask: rewrite file {i} fixing them."
            steps.append(Step(name, prefix + suffix, int(n), system=system, criteria=criteria, stage=kind))
            if kind != "review":
                new[i] = name
        current = new
    last = f"_r{int(rounds) - 1}"
    last_round = [s.name for s in steps if s.stage == steps[-1].stage and s.name.endswith(last)]
    return App("multi-agent", instance, tuple(steps), tuple(last_round), tenant,
               shape=f"multi-agent:{fanout}x{rounds}:{preamble}/{design}/{file}/{review}")


def gpts_app(instance: str, seed: int, which: int, scale: float, tenant: str = "default") -> App:
    """One request of a GPTs-like app: a long system prompt shared by every user of
    that app (same text for all instances), a short query, a long answer."""
    sys_tokens, q_tokens, out = GPTS_APPS[which]
    system = synthetic_text(max(16, int(sys_tokens * scale)), _seed("gpts-system", which))
    query = synthetic_text(q_tokens, _seed(seed, instance, "query"))
    n = max(8, int(out * scale))
    return App("shared-prompt", instance, (Step("answer", query, n, system=system, stage=f"app{which}"),),
               ("answer",), tenant, shape=f"gpts{which}:{scale}")


def chat_app(instance: str, seed: int, prompt: int, out: int, tenant: str = "chat",
             stream: bool = False) -> App:
    text = synthetic_text(prompt, _seed(seed, instance, "chat"))
    return App("chat", instance, (Step("reply", text, out, stage="chat", stream=stream),), ("reply",),
               tenant, shape=f"chat:{prompt}:{out}")


def agents_app(i: int, seed: int, size: str) -> App:
    """One program of the ``agents`` workload (see ``benchmarks/agents.py``)."""
    kind, script = make_script(i, seed, size, synthetic_text, _seed)
    steps = tuple(Step(f"t{k}", "", t.max_tokens, stage=t.kind) for k, t in enumerate(script.turns))
    return App(kind, f"agents-{i}", steps, (steps[-1].name,), "default",
               shape=script_shape(kind, size, script), script=script)


def _snap(x: float, buckets: tuple[int, ...]) -> int:
    """The bucket nearest to ``x`` on a log scale."""
    return min(buckets, key=lambda b: abs(math.log(b / max(x, 1.0))))


def chat_lengths(rng: random.Random, max_prompt: float, max_total: float) -> tuple[int, int]:
    """(prompt, output) tokens of one bucketed ShareGPT-like chat."""
    prompt = _snap(rng.lognormvariate(5.3, 0.8), tuple(b for b in CHAT_PROMPT_BUCKETS if b <= max_prompt))
    outs = tuple(b for b in CHAT_OUTPUT_BUCKETS if prompt + b <= max_total)
    return prompt, _snap(rng.lognormvariate(5.0, 0.7), outs)


# ---------------------------------------------------------------- workloads

def poisson_times(n: int, rate: float, rng: random.Random, start: float = 0.0) -> list[float]:
    """``n`` arrival times of a Poisson process of ``rate`` per second (first at ``start``)."""
    t, out = start, []
    for i in range(n):
        if i:
            t += rng.expovariate(rate)
        out.append(t)
    return out


def app_maker(name: str, size: str = "small", seed: int = 0) -> Callable[[int], App]:
    """``make(i)``: the ``i``-th application instance of a sweepable workload (closed
    loops draw as many as they need; open-loop runs take the first N). Tenants rotate
    over four (batch tenants for ``mixed-heavy``)."""
    if name not in SWEEPABLE:
        raise ValueError(f"{name!r} has no app stream; sweepable: {', '.join(SWEEPABLE)}")
    p = size_params(name, size)

    def make(i: int) -> App:
        inst, tenant = f"{name}-{i}", f"tenant{i % 4}"
        if name == "chain":
            return chain_app(inst, seed, int(p["chunks"]), int(p["chunk_tokens"]), int(p["out"]), tenant)
        if name == "map-reduce":
            return map_reduce_app(inst, seed, int(p["chunks"]), int(p["chunk_tokens"]), int(p["out"]), tenant)
        if name == "multi-agent":
            return multi_agent_app(inst, seed, tenant=tenant, **{k: int(v) for k, v in p.items()})  # type: ignore[arg-type]
        if name == "shared-prompt":
            return gpts_app(f"gpts-{i}", seed, i % 4, p["scale"], tenant=f"app{i % 4}")
        if name == "agents":
            return agents_app(i, seed, size)
        # mixed-heavy: batch apps alternate map-reduce / multi-agent, two batch tenants
        if i % 2 == 0:
            mr = size_params("map-reduce", size)
            return map_reduce_app(f"batch-mr-{i}", seed, int(mr["chunks"]), int(mr["chunk_tokens"]),
                                  int(mr["out"]), tenant="batch-mr", criteria="throughput")
        ma = size_params("multi-agent", size)
        return multi_agent_app(f"batch-ma-{i}", seed, tenant="batch-ma", criteria="throughput",
                               **{k: int(v) for k, v in ma.items()})  # type: ignore[arg-type]

    return make


def build_workload(name: str, size: str = "small", seed: int = 0, apps: int | None = None,
                   rate: float | None = None) -> Workload:
    """The workload ``name``. ``apps``/``rate`` run that many instances as a Poisson
    process of ``rate`` apps per engine-second (default: one instance, or the
    workload's own request stream for shared-prompt, mixed and mixed-heavy)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    p = size_params(name, size)
    rng = random.Random(_seed(seed, name, size, apps, rate))
    if name == "agents":
        n = apps if apps is not None else int(p["apps"])
        make = app_maker(name, size, seed)
        times = poisson_times(n, rate if rate else p["rate"], rng)
        return Workload(name, size, [Arrival(t, make(i)) for i, t in enumerate(times)],
                        {**p, "apps": n, "rate": rate if rate else p["rate"]})
    if name in ("chain", "map-reduce", "multi-agent"):
        n = apps if apps is not None else 1
        make = app_maker(name, size, seed)
        times = poisson_times(n, rate, rng) if rate else [0.0] * n
        arrivals = [Arrival(t, make(i) if n > 1 else replace(make(i), tenant="default"))
                    for i, t in enumerate(times)]
        return Workload(name, size, arrivals, {**p, "apps": n, "rate": rate})
    if name == "shared-prompt":
        count = apps if apps is not None else int(p["requests"])
        r = rate if rate else p["rate"]
        make = app_maker(name, size, seed)
        arrivals = [Arrival(t, make(i)) for i, t in enumerate(poisson_times(count, r, rng))]
        return Workload(name, size, arrivals, {**p, "requests": count, "rate": r})
    if name == "mixed-heavy":
        return _mixed_heavy(size, seed, p, rng, apps, rate)
    # mixed: a latency-critical chat tenant and a throughput map-reduce tenant
    chats = apps if apps is not None else int(p["chats"])
    chat_rate = rate if rate else p["chat_rate"]
    arrivals = []
    for i, t in enumerate(poisson_times(chats, chat_rate, rng)):
        prompt = int(min(p["chat_max_prompt"], max(16, rng.lognormvariate(5.3, 0.8))))
        out = int(min(p["chat_max_total"] - prompt, max(16, rng.lognormvariate(5.0, 0.7))))
        arrivals.append(Arrival(t, chat_app(f"chat-{i}", seed, prompt, out)))
    t = p["batch_start"]
    gaps = (0.5, 0.5, 10.0) if size == "full" else (0.25, 0.25, 2.0)
    for j in range(int(p["batch_apps"])):
        app = map_reduce_app(f"batch-{j}", seed, int(p["chunks"]), int(p["chunk_tokens"]),
                             int(p["out"]), tenant="batch", criteria="throughput")
        arrivals.append(Arrival(t, app))
        t += gaps[j % len(gaps)]
    arrivals.sort(key=lambda a: a.at_s)
    return Workload(name, size, arrivals, {**p, "chats": chats, "chat_rate": chat_rate})


def _mixed_heavy(size: str, seed: int, p: dict[str, float], rng: random.Random, apps: int | None,
                 rate: float | None) -> Workload:
    """Batch apps as a Poisson process of ``rate`` apps/s, and streamed chats (tenant
    ``chat``, latency-critical) at the size's ``chat_rate`` over the same span."""
    n = apps if apps is not None else int(p["batch_apps"])
    r = rate if rate else p["batch_rate"]
    make = app_maker("mixed-heavy", size, seed)
    arrivals = [Arrival(t, make(i)) for i, t in enumerate(poisson_times(n, r, rng))]
    span = arrivals[-1].at_s if arrivals else 0.0
    chats = max(int(p["min_chats"]), round(p["chat_rate"] * span))
    chat_rng = random.Random(_seed(seed, "mixed-heavy-chat", size, n, r))
    for i in range(chats):
        prompt, out = chat_lengths(chat_rng, p["chat_max_prompt"], p["chat_max_total"])
        at = chat_rng.uniform(0.0, span) if span else i / p["chat_rate"]
        arrivals.append(Arrival(at, chat_app(f"chat-{i}", seed, prompt, out, stream=True)))
    arrivals.sort(key=lambda a: a.at_s)
    return Workload("mixed-heavy", size, arrivals,
                    {**p, "batch_apps": n, "batch_rate": r, "chats": chats, "rate": r})
