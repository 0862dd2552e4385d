"""``parrot-gateway sim``: flags in, one simulated engine served in the foreground."""

from __future__ import annotations

import argparse
import logging

from analysis.tokenizer import TOKENIZERS

from .config import BANNER, SimConfig
from .profiles import DEFAULT_PROFILE, PROFILES
from .textgen import EOS_AFTER


def _range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LO,HI (two integers)") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError("expected 1 <= LO <= HI")
    return lo, hi


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="parrot-gateway sim", description=BANNER)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="wall seconds per simulated second (0.01 = 100x faster)")
    ap.add_argument("--max-running-requests", type=int, default=None)
    ap.add_argument("--kv-capacity-tokens", type=int, default=None)
    ap.add_argument("--chunked-prefill-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="seed of requests that sample without one")
    ap.add_argument("--eos-after", type=_range, default=EOS_AFTER, metavar="LO,HI",
                    help="without ignore_eos, outputs end with EOS after LO..HI tokens "
                         "(deterministic in prompt and seed; default %(default)s)")
    ap.add_argument("--api", choices=["sglang", "openai"], default="sglang",
                    help="openai: a plain OpenAI-compatible server (no /generate, /get_load, "
                         "/flush_cache ..., rid/priority ignored, no cached-token details)")
    ap.add_argument("--model", default="sim-llama-3-8b", help="served model name")
    ap.add_argument("--model-path", default=None, help="tokenizer directory to report/create")
    ap.add_argument("--tokenizer", choices=TOKENIZERS, default="cl100k",
                    help="how the engine counts tokens (bytes: one per UTF-8 byte)")
    ap.add_argument("--keep-alive-s", type=float, default=5.0,
                    help="idle keep-alive of client connections (default 5, as SGLang's server)")
    ap.add_argument("--log-level", default="info")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``parrot-gateway sim``: run one simulated engine in the foreground."""
    import uvicorn

    from .app import create_sim_app

    a = _parser().parse_args(argv)
    if a.time_scale < 0:
        print("--time-scale must be >= 0")
        return 2
    config = SimConfig(profile=a.profile, time_scale=a.time_scale,
                       max_running_requests=a.max_running_requests,
                       kv_capacity_tokens=a.kv_capacity_tokens,
                       chunked_prefill_size=a.chunked_prefill_size, seed=a.seed,
                       model=a.model, host=a.host, port=a.port, model_path=a.model_path,
                       eos_after=a.eos_after, tokenizer=a.tokenizer, api=a.api)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    app = create_sim_app(config)
    print(f"*** {BANNER} ***\n*** listening on http://{a.host}:{a.port} "
          f"profile={a.profile} time_scale={a.time_scale} ***", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level.lower(),
                timeout_keep_alive=max(1, round(a.keep_alive_s)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
