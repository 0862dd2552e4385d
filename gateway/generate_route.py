"""SGLang-native endpoints: ``POST /generate`` and ``GET /get_model_info``.

SGLang frontend programs (``sgl.RuntimeEndpoint`` pointed at the gateway) and
many RL/eval tools speak ``/generate``. It is authenticated, rate limited,
queued and placed (prefix affinity, load) like the OpenAI routes, then proxied
to an engine's own ``/generate``; only SGLang engines have one, so a gateway
over OpenAI-compatible engines answers 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.errors import NotFound

from . import program_routes as programs
from .completion import RequestContext
from .openai_routes import gateway_of
from .responses import CLIENT_CLOSED, primed, streaming, unless_client_left
from .validation import parse_json, validate_generate


async def generate(request: Request) -> Response:
    gw = gateway_of(request)
    principal = gw.principal(request)
    if not any(s.engine.has_generate for s in gw.pool.states.values()):
        raise NotFound("/generate needs SGLang engines; this gateway's engines are OpenAI-compatible "
                       "(--backend-kind openai): use /v1/completions", code="route_not_supported")
    body = parse_json(await request.body(), gw.settings.max_body_bytes)
    parsed = validate_generate(body)
    principal.check_model(parsed.model)
    sp = parsed.sampling_params
    await gw.limits.check_request(principal, {
        "prompt": parsed.text if parsed.text is not None else parsed.input_ids,
        "max_tokens": sp.max_new_tokens if sp and sp.max_new_tokens is not None else 128})
    ctx = RequestContext(request_id=request.state.request_id, tenant=principal.tenant,
                         weight=principal.weight)
    # a prompt of text or token ids: only an X-Parrot-Program hint places it in a program
    placement = await programs.place(gw, request, body, principal, ctx, None)
    if parsed.stream:
        resp = streaming(await primed(gw.completions.generate_stream(body, ctx)))
        resp.headers.update(programs.headers_of(placement) or {})
        return resp
    outcome = await unless_client_left(request, gw.completions.generate(body, ctx))
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    programs.finish(gw, placement, None, outcome.usage, outcome.engine)
    return JSONResponse(outcome.body, headers=programs.headers_of(placement))


async def model_info(request: Request) -> Response:
    """What ``sgl.RuntimeEndpoint`` reads at start (it names the chat template by ``model_path``)."""
    gw = gateway_of(request)
    gw.principal(request)
    models = gw.pool.models()
    if not models:
        raise NotFound("no engine has reported its model yet", code="no_model")
    return JSONResponse({"model_path": models[0], "tokenizer_path": None, "is_generation": True,
                         "served_model_name": models[0], "models": models})


routes = [
    Route("/generate", generate, methods=["POST"]),
    Route("/get_model_info", model_info, methods=["GET"]),
]
