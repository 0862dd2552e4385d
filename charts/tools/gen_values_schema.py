"""Regenerate the `gateway` section of the chart's values.schema.json from Settings.

Run after adding or changing a field of gateway.settings.Settings:

    python charts/tools/gen_values_schema.py

tests/test_chart.py fails while the two disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.settings import Settings

SCHEMA = Path(__file__).resolve().parents[1] / "parrot-gateway" / "values.schema.json"
MANAGED = {"host", "backend", "redis", "api_keys", "config", "advertise_url"}  # set by the chart
SECRET = {"ui_secret"}  # never in the ConfigMap: PARROT_UI_SECRET from a Secret, via extraEnv


def gateway_properties() -> dict[str, dict[str, object]]:
    props = Settings.model_json_schema()["properties"]
    out = {}
    for name in props:
        if name in MANAGED | SECRET:
            continue
        out[name] = {k: v for k, v in props[name].items() if k not in ("title", "default")}
    return out


def main() -> None:
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["gateway"]["properties"] = gateway_properties()
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    main()
