"""`assay serve`: a logged model behind Ray Serve, the field's engine for serving past one
process: N replicas, each batching the requests that arrive within a few milliseconds into one
forward pass.

It speaks MLflow's scoring protocol, so a client of `mlflow models serve` switches by changing
the port: POST /invocations with {"inputs": ...}, {"instances": ...} or {"dataframe_split": ...}
(parsed by MLflow's own `infer_and_parse_data`), answered {"predictions": ...} by MLflow's
`predictions_to_json`; GET /ping and /health answer when it is up. Each request's input is read
by the model's own contract (`assay.tracking.contract.prepare`) before it joins a batch, so a bad
request gets its own HTTP 400 with the contract's message (INVALID_PARAMETER_VALUE, as MLflow's
server answers) and costs the others nothing; the batch then runs `contract.run`, the same code
as `assay predict` and the pyfunc. Bound to 127.0.0.1: on a local Ray, or on the head `assay
cluster up` runs on this machine (`ray.address`); another machine's cluster is refused (its proxy
would listen there, not here).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assay import distributed, tracking
from assay.errors import UserError
from assay.predict import load

ROUTES = ("/invocations", "/ping", "/health")


class ServeError(UserError, ValueError):
    pass


@dataclass
class ServeOptions:
    replicas: int = 1
    port: int = 8000
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0


def split_output(out, sizes: list[int]) -> list:
    """A batch's answer back into its requests' (rows in order): arrays, or the
    reconstruction's dict of arrays."""
    cuts = np.cumsum(sizes)[:-1]
    if isinstance(out, dict):
        parts = {k: np.split(v, cuts) for k, v in out.items()}
        return [{k: parts[k][j] for k in out} for j in range(len(sizes))]
    return np.split(out, cuts)


class ModelServer:
    """One replica: the pyfunc's network, card and tokenizer, loaded once; requests batched."""

    def __init__(self, model_uri: str, tracking_uri: str, opts: ServeOptions) -> None:
        import torch

        model = tracking.load_model(model_uri, tracking_uri)
        python_model = model.unwrap_python_model()
        self.card, self.net = python_model.card, python_model.net
        self.tokenizer = python_model.tokenizer
        self.model_uri = model_uri
        # replicas share the machine's cores: each takes its share, not all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // opts.replicas))
        self.forward.set_max_batch_size(opts.max_batch_size)
        self.forward.set_batch_wait_timeout_s(opts.batch_wait_ms / 1000)

    async def __call__(self, request):
        from starlette.responses import JSONResponse, PlainTextResponse, Response

        from assay.tracking import contract as scoring

        path = request.url.path.rstrip("/") or "/"
        if request.method == "GET" and path in ("/ping", "/health"):
            return PlainTextResponse("\n")
        if path != "/invocations" or request.method != "POST":
            return JSONResponse(
                {"error_code": "ENDPOINT_NOT_FOUND", "message": f"POST {ROUTES[0]}; GET /ping"},
                status_code=404,
            )
        try:
            x = scoring.parse_request(self.card, await request.body(), self.tokenizer)
        except scoring.RequestError as e:  # bad JSON, no known format, out of contract
            return Response(scoring.error_json(e), status_code=400, media_type="application/json")
        out, batch = await self.forward(x)
        # how many requests shared the forward pass that answered this one
        headers = {"assay-batch-requests": str(batch)}
        return Response(scoring.answer_json(out), media_type="application/json", headers=headers)

    async def forward(self, xs: list[np.ndarray]) -> list:
        """The batch: every waiting request's rows in one pass (`serve.batch` wraps it); each
        request gets its rows' answer and the batch's size in requests."""
        from assay.tracking.contract import run

        out = run(self.card, self.net, np.concatenate(xs))
        return [(part, len(xs)) for part in split_output(out, [len(x) for x in xs])]


def serve(
    cfg, root: Path, model_uri: str, opts: ServeOptions, until: Callable[[], bool] | None = None
) -> None:
    """Serve `model_uri` until interrupted (Ctrl-C, SIGTERM) or `until()` is true; everything
    it started (replicas, proxy, a local Ray) is stopped on the way out."""
    target = distributed.address(cfg)
    if target and not distributed.on_loopback(target):
        raise ServeError(
            f"ray.address (or RAY_ADDRESS) {target} is another machine: `assay serve` listens on "
            "127.0.0.1 of this machine's Ray (a local one, or a head on loopback from `assay "
            "cluster up`). Run it on the cluster's head instead"
        )
    # here first, as `assay predict` loads it: a bad URI or a model without a contract fails
    # before Ray starts
    _, card = load(model_uri, root, cfg.tracking)
    uri = tracking.tracking_uri(cfg.tracking, root)  # where each replica loads it from
    with distributed.ray_session(cfg, dashboard=False):
        from ray import serve as ray_serve

        cpus = (os.cpu_count() or 1) / opts.replicas
        deployment = ray_serve.deployment(
            _batched_class(),
            name="model",
            num_replicas=opts.replicas,
            max_ongoing_requests=max(opts.max_batch_size * 2, 8),
            ray_actor_options={"num_cpus": min(1.0, cpus)},
            # a line per request would bury the terminal (and slow a load test): warnings only;
            # Ray Serve's full logs stay under /tmp/ray/session_latest/logs/serve
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        ray_serve.start(http_options={"host": "127.0.0.1", "port": opts.port})
        try:
            ray_serve.run(
                deployment.bind(model_uri, uri, opts),
                name=f"assay-{opts.port}",  # one app per server: others on the head stay
                route_prefix="/",
                blocking=False,
            )
            print(
                f"serving {model_uri} ({card['objective']}) at "
                f"http://127.0.0.1:{opts.port}/invocations: {opts.replicas} replica(s), batches "
                f"of up to {opts.max_batch_size} within {opts.batch_wait_ms:g} ms. Ctrl-C stops.",
                flush=True,
            )
            while not (until and until()):
                time.sleep(0.5)
        finally:
            # On a cluster, this app goes and Serve stays for the others'. A local Ray goes
            # whole with the session (`ray.shutdown`), replicas and proxy with it: Serve's own
            # shutdown would wait 30 s for a controller whose raylet a group SIGTERM (Ctrl-C in
            # a terminal, `timeout`) has already stopped.
            if target:
                ray_serve.delete(f"assay-{opts.port}")


def _batched_class() -> type:
    """ModelServer with `forward` as a Ray Serve batch method: made here, not at import, so Ray
    loads only when serving and after `distributed.ray_defaults`. Each replica then sets the
    batch size and wait it was given."""
    from ray import serve as ray_serve

    class BatchedModelServer(ModelServer):
        forward = ray_serve.batch(ModelServer.forward)

    return BatchedModelServer
