"""Gateway variants: the gateway with some settings changed, measured beside the rest.

Built in: the policy comparison (one scheduling mechanism switched off each) and program
inference off. ``bench --variant NAME:SETTING=VALUE,...`` adds one for a run, so a
setting is compared side by side on the same engines instead of across runs (run-to-run
variation near saturation is larger than most settings' effect). Each variant is a
gateway process of its own, on a Redis of its own.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from gateway.settings import ENV_PREFIX, Settings

# The policy comparison: the gateway (whole DAG submitted) with one mechanism off each.
VARIANTS: dict[str, dict[str, str]] = {
    "gateway-fifo": {"PARROT_APP_ORDER": "false"},  # no application age (order or priority)
    "gateway-nogroups": {"PARROT_TASK_GROUPS": "false"},  # no task groups
    "gateway-nowindow": {"PARROT_APP_WINDOW": "0"},  # no application window (the default now)
    "gateway-window": {"PARROT_APP_WINDOW": "8"},  # the application window of 8 (the old default)
    "gateway-noadmission": {  # nothing held back: the engines queue everything
        "PARROT_APP_WINDOW": "0", "PARROT_PREFILL_BUDGET_CHUNKS": "100000",
        "PARROT_PROTECT_LATENCY": "false",
    },
    "gateway-nogate": {"PARROT_INTAKE_SLOTS": "0"},  # background submits not made to take turns
}
# Plain clients through a gateway with one setting changed (agents: program inference off).
PLAIN_VARIANTS: dict[str, dict[str, str]] = {
    "gateway-plain-noinfer": {"PARROT_INFER_PROGRAMS": "false"},
}


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str]  # PARROT_* settings of its gateway process
    plain: bool  # driven by plain clients (``gateway-plain-*``), else by whole-DAG submits


def parse_variant(text: str, taken: Collection[str] = ()) -> Variant:
    """``NAME:SETTING=VALUE[,SETTING=VALUE...]``; a setting is a field of the gateway's
    settings (``prefill_budget_chunks``) or its variable (``PARROT_PREFILL_BUDGET_CHUNKS``).
    A name starting ``gateway-plain-`` is driven like ``gateway-plain``, any other
    ``gateway-`` name like ``gateway``. Raises ValueError saying what is wrong."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name.startswith("gateway-") or not name[len("gateway-"):].replace("-", "").isalnum():
        raise ValueError(f"variant {text!r}: its name must be gateway-<letters, digits, dashes>")
    if name in taken or "-2r" in name:  # "-2r" marks the two-replica systems
        raise ValueError(f"variant {name!r}: that name is already a system or kept for one")
    env: dict[str, str] = {}
    for item in (i for i in rest.split(",") if i.strip()):
        key, eq, value = item.partition("=")
        field = key.strip().lower()
        field = field[len(ENV_PREFIX):] if field.startswith(ENV_PREFIX.lower()) else field
        if not eq or field not in Settings.model_fields:
            raise ValueError(f"variant {name!r}: {item.strip()!r} is not SETTING=VALUE with a "
                             "gateway setting (see `parrot-gateway serve --help`)")
        env[ENV_PREFIX + field.upper()] = value.strip()
    if not env:
        raise ValueError(f"variant {name!r}: no setting changed (NAME:SETTING=VALUE,...)")
    return Variant(name, env, plain=name.startswith("gateway-plain-"))


def register(variant: Variant) -> None:
    """Make ``variant`` a system of this run (the bench CLI, before it starts anything)."""
    (PLAIN_VARIANTS if variant.plain else VARIANTS)[variant.name] = variant.env
