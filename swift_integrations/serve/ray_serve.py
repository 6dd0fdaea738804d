"""Engine replicas on Ray Serve, behind Ray Serve's HTTP proxy, sharing one profile store.

Ray Serve does the distributed part (placing replicas on nodes, routing, back-pressure,
restarting dead replicas, autoscaling); this module only says what one replica is: a
:class:`~swift_engine.SwiftEngine` and the OpenAI-compatible app of
:mod:`swift_integrations.serve.app` around it. So a replica answers exactly what the
single-process server answers, and Ray Serve's proxy speaks the same HTTP API.

What the replicas share is what each pipeline step learned: all of them use one profile store,
so a step's skip profile (and draft memory) converged on one replica serves every replica:

* ``store="directory"``: one :class:`~swift_engine.store.profile_store.ProfileStore` directory every
  replica can reach (one machine, or a shared filesystem on a cluster). The store is safe
  across processes (per-record file locks, atomic writes).
* ``store="actor"``: no shared disk: the records live in a
  :class:`~swift_integrations.serve.ray_store.ProfileStoreActor`, a detached named Ray actor
  on the head node (:class:`~swift_integrations.serve.ray_store.RayProfileStore`).

Entry points: ``python -m swift_integrations.serve --ray --replicas N`` (:func:`run`), and
``serve run swift_integrations.serve.ray_serve:build_app`` or a Ray Serve config file
(``docs/serve/ray_serve.yaml``) for :func:`build_app`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal, cast

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve.deployment import Application, Deployment

from swift_integrations.serve.app import create_app
from swift_integrations.serve.ray_store import DEFAULT_ACTOR_NAME, RayProfileStore
from swift_integrations.serve.settings import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT, check_exposure

__all__ = ["ReplicaSettings", "SwiftReplica", "build_app", "run"]

log = logging.getLogger(__name__)

#: The Ray Serve application name (``serve status``, ``serve shutdown``).
APP_NAME = "swift"
#: Header naming the replica that answered (for operators, and the tests' proof that both served).
REPLICA_HEADER = b"x-swift-replica"


class ReplicaSettings(BaseModel):
    """What every replica loads and how it serves: the ``args`` of :func:`build_app`."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="catalog short name, folder, .gguf file or hub id (None: embedded)")
    gguf_file: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    model_name: str | list[str] | None = Field(None, description="the model id clients see (more: aliases)")
    api_key: str | None = Field(None, description="bearer token required on /v1 (default: $SWIFT_API_KEY)")
    max_queue: int = Field(DEFAULT_MAX_QUEUE, ge=1, description="requests one replica takes at once")
    request_timeout: float | None = Field(DEFAULT_REQUEST_TIMEOUT, gt=0)
    store: Literal["directory", "actor"] = "directory"
    profile_dir: str | None = Field(
        None,
        description="store='directory': the shared profile directory; 'actor': where each machine keeps its own files",
    )
    store_actor: str = Field(DEFAULT_ACTOR_NAME, description="store='actor': the store actor's name")
    threads: int | None = Field(None, ge=1, description="torch threads per replica (default: its Ray CPUs)")
    config: dict[str, Any] | None = Field(None, description="SwiftConfig fields for every replica's engine")
    tool_followup: Literal["auto", "answer", "model"] = Field("auto", description="see tool_followup.py")
    # deployment options (also settable under ``deployments:`` in a Ray Serve config file)
    replicas: int = Field(1, ge=1, description="replicas to start with")
    max_replicas: int | None = Field(None, ge=1, description="above replicas: autoscale up to this many")
    target_ongoing_requests: float = Field(2.0, gt=0, description="autoscaling: requests per replica to aim for")
    replica_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per replica")

    @field_validator("config")
    @classmethod
    def _valid_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Checked here, once, rather than failing in every replica's constructor."""
        if value is not None:
            from swift_engine import SwiftConfig

            SwiftConfig.model_validate(value)
        return value


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a replica (local testing mode)
        return f"pid-{os.getpid()}"


class _ReplicaHeader:
    """ASGI middleware adding ``X-Swift-Replica`` to every response (streamed ones too)."""

    def __init__(self, app: Any, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.value)]}
            await send(message)

        await self.app(scope, receive, send_with_header)


@serve.deployment(name="SwiftReplica", health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress()
class SwiftReplica:
    """One engine and its OpenAI-compatible app; Ray Serve runs as many as the deployment says."""

    def __init__(self, settings: dict[str, Any] | ReplicaSettings) -> None:
        import torch

        from swift_engine import SwiftConfig, SwiftEngine
        from swift_engine.store.profile_store import ProfileStore

        self.settings = ReplicaSettings.model_validate(settings)
        s = self.settings
        torch.set_num_threads(s.threads or max(1, int(s.replica_cpus)))
        store: ProfileStore
        if s.store == "actor":
            store = RayProfileStore(name=s.store_actor, directory=s.profile_dir)
        else:
            store = ProfileStore(s.profile_dir)
        self.replica_id = _replica_id()
        log.info("replica %s loading %s (profiles: %r)", self.replica_id, s.model or "the embedded model", store)
        config = SwiftConfig.model_validate(s.config) if s.config else None
        self.engine = SwiftEngine.from_pretrained(
            s.model, gguf_file=s.gguf_file, device=s.device, dtype=s.dtype, config=config, profile_store=store
        )
        # the one-off kernel choice and cost measurement (seconds) before Ray routes any request here,
        # not inside the first request's latency (or its timeout)
        _ = self.engine.costs

    def __serve_build_asgi_app__(self) -> FastAPI:
        s = self.settings
        app = create_app(
            self.engine,
            api_key=s.api_key or os.environ.get("SWIFT_API_KEY") or None,
            max_queue=s.max_queue,
            request_timeout=s.request_timeout,
            model_name=s.model_name or s.model,
            tool_followup=s.tool_followup,
        )
        app.add_middleware(_ReplicaHeader, value=self.replica_id)
        return app

    def check_health(self) -> None:
        """Ray Serve's periodic probe: a closed engine is a dead replica (Ray replaces it)."""
        if self.engine.closed:
            raise RuntimeError("the engine is closed")


def deployment_options(settings: ReplicaSettings) -> dict[str, Any]:
    """Ray Serve options for :class:`SwiftReplica` from ``settings`` (replicas, autoscaling, CPUs, queues)."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.replica_cpus},
        # one engine serves max_queue requests at once; more wait in the proxy's bounded queue (503 past it)
        "max_ongoing_requests": settings.max_queue,
        "max_queued_requests": 4 * settings.max_queue,
    }
    if settings.max_replicas is not None and settings.max_replicas > settings.replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def build_app(args: dict[str, Any] | ReplicaSettings) -> Application:
    """The application builder of ``serve run swift_integrations.serve.ray_serve:build_app key=value ...``.

    Ray Serve validates ``args`` (a config file's ``args:``, or ``key=value`` words) into
    :class:`ReplicaSettings`. With ``store="actor"`` the store actor is created here (detached,
    on the head node) if it does not exist yet, so it outlives every replica.
    """
    settings = ReplicaSettings.model_validate(args)
    if settings.store == "actor":
        from swift_integrations.serve.ray_store import store_actor

        store_actor(settings.store_actor)
    deployment = cast(Deployment, SwiftReplica)  # what @serve.deployment made of it (mypy ignores class decorators)
    return deployment.options(**deployment_options(settings)).bind(settings.model_dump())


def run(
    settings: ReplicaSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    blocking: bool = True,
) -> None:
    """Start (or join) a Ray cluster, deploy :func:`build_app` behind Ray Serve's proxy on ``host:port``.

    ``address``: an existing cluster (``"auto"``, ``ray://...``; default ``$RAY_ADDRESS``, else a
    local one is started). ``blocking``: serve until interrupted, then shut the application down.
    The exposure rule of the single-process server holds: beyond loopback, an API key is required.
    """
    import ray

    check_exposure(host, settings.api_key or os.environ.get("SWIFT_API_KEY") or None)
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    log.info("deploying %d replica(s) on Ray Serve at http://%s:%d/v1", settings.replicas, host, port)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=blocking)
