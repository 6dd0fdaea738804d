"""The server's command line: ``python -m swift_integrations.serve`` (and ``swift-accel serve``).

:func:`serve` loads one model and serves it in this process with uvicorn; :func:`start` is that, or
with ``ray=True`` engine replicas on Ray Serve (:mod:`swift_integrations.serve.ray_serve`);
:func:`main` parses the flags. Bad flags and missing extras end in one line naming them, never a
traceback. A server reachable from other machines must not run an open model
(:func:`~swift_integrations.serve.settings.check_exposure`).
"""

import argparse
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from swift_integrations.serve.app import create_app
from swift_integrations.serve.settings import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT, check_exposure

if TYPE_CHECKING:  # pragma: no cover
    from swift_integrations.tool_followup import ToolFollowup

__all__ = ["main", "serve", "start"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m swift_integrations.serve", description="Serve a model over an OpenAI-compatible HTTP API."
    )
    p.add_argument("--model", default=None, help="catalog short name, folder, .gguf file or hub id (default: embedded)")
    p.add_argument("--gguf-file", default=None, help="the .gguf file inside --model (a folder or hub repo)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="required bearer token (default: $SWIFT_API_KEY)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="requests admitted at once (429 past it)")
    p.add_argument(
        "--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT, help="seconds a generation may take"
    )
    p.add_argument(
        "--served-model-name",
        "--model-name",
        dest="model_name",
        nargs="+",
        default=None,
        help="the model id clients see and send (default: --model); more names are aliases, as vLLM's flag",
    )
    p.add_argument("--profile-dir", default=None, help="the profile store directory (default: the user cache)")
    p.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="rows one pass holds for concurrent requests (continuous batching on int4/int8; 0: requests take "
        "turns on the model; default: the engine's, 16)",
    )
    p.add_argument(
        "--tool-followup",
        choices=("auto", "answer", "model"),
        default="auto",
        help="after tool results: ask for the answer ('answer'), let the model decide ('model'), or as measured "
        "for catalog models ('auto')",
    )
    ray = p.add_argument_group("scale-out on Ray Serve (the ray extra)")
    ray.add_argument("--ray", action="store_true", help="serve engine replicas on Ray Serve instead of one process")
    ray.add_argument("--replicas", type=int, default=2, help="replicas (the minimum when autoscaling)")
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs (and torch threads) per replica")
    ray.add_argument(
        "--store",
        choices=("directory", "actor"),
        default="directory",
        help="what replicas share profiles through: --profile-dir (one machine or a shared filesystem) "
        "or a Ray actor on the head node (no shared disk)",
    )
    ray.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    return p


def serve(
    model: str | None = None,
    *,
    gguf_file: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    model_name: str | Sequence[str] | None = None,
    profile_dir: str | None = None,
    tool_followup: "ToolFollowup" = "auto",
    batch_rows: int | None = None,
) -> None:
    """Load the model and serve it until interrupted (the entry point of the CLI and ``-m``).

    A server reachable from other machines must not run an open model: without an API key
    (``api_key`` or ``$SWIFT_API_KEY``) any host but this machine's loopback is refused
    (``ValueError``, before the model loads).
    """
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError("the server needs FastAPI and uvicorn: pip install 'swift-accel[serve]'") from None
    from swift_engine import SwiftEngine
    from swift_integrations.engine_cache import get_engine

    key = api_key or os.environ.get("SWIFT_API_KEY") or None
    check_exposure(host, key)
    if max_queue < 1:
        raise ValueError("--max-queue must be at least 1")
    if request_timeout is not None and not request_timeout > 0:
        raise ValueError("--request-timeout must be a positive number of seconds")
    if tool_followup not in ("auto", "answer", "model"):
        raise ValueError(f"--tool-followup must be auto, answer or model, got {tool_followup!r}")
    config = None
    if batch_rows is not None:
        if batch_rows < 0:
            raise ValueError("--batch-rows must be 0 (off) or more")
        from swift_engine import SwiftConfig

        config = SwiftConfig(batch_rows=batch_rows)
    if profile_dir is None:  # catalog names, folders, .gguf files, hub ids; shared with in-process adapters
        engine = get_engine(model, gguf_file, device, dtype, config)
    else:
        engine = SwiftEngine.from_pretrained(
            model, gguf_file=gguf_file, device=device, dtype=dtype, profile_store=profile_dir, config=config
        )
    app = create_app(
        engine,
        api_key=key,
        max_queue=max_queue,
        request_timeout=request_timeout,
        model_name=model_name or model or None,
        tool_followup=tool_followup,
    )
    uvicorn.run(app, host=host, port=port)


def start(
    model: str | None = None,
    *,
    ray: bool = False,
    replicas: int = 2,
    max_replicas: int | None = None,
    replica_cpus: float = 1.0,
    store: str = "directory",
    ray_address: str | None = None,
    **options: Any,
) -> None:
    """Serve in one process (:func:`serve`), or with ``ray=True`` as replicas on Ray Serve.

    ``options`` are :func:`serve`'s (``host``, ``port``, ``api_key``, ``max_queue``, ...); the
    ``ray`` ones are :class:`~swift_integrations.serve.ray_serve.ReplicaSettings` fields. Bad values
    raise ``ValueError`` with one line naming the flag; a missing extra, ``ImportError``.
    """
    if model is not None and model.strip().lower() == "embedded":
        model = None
    if not ray:
        serve(model, **options)
        return
    try:
        from swift_integrations.serve.ray_serve import ReplicaSettings, run
    except ImportError as exc:
        raise ImportError(f"--ray needs Ray Serve: pip install 'swift-accel[ray]' ({exc})") from None
    from pydantic import ValidationError

    host, port = options.pop("host", "127.0.0.1"), options.pop("port", 8000)
    batch_rows = options.pop("batch_rows", None)
    if batch_rows is not None:  # every replica's engine batches its own requests
        options["config"] = {**(options.get("config") or {}), "batch_rows": batch_rows}
    try:
        # validated from a dict: ``store`` (a flag's string) is checked by pydantic, not the type checker
        settings = ReplicaSettings.model_validate(
            dict(
                model=model,
                store=store,
                replicas=replicas,
                max_replicas=max_replicas,
                replica_cpus=replica_cpus,
                **options,
            )
        )
    except ValidationError as exc:
        raise ValueError(_validation_message(exc)) from None
    run(settings, host=host, port=port, address=ray_address)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m swift_integrations.serve``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        start(**vars(args))
    except (ValueError, ImportError) as exc:  # a bad flag or a missing extra: one line, no traceback
        raise SystemExit(f"error: {exc}") from None


def _validation_message(exc: Any) -> str:
    """A pydantic error as one line naming the flags: ``--max-replicas: Input should be ...``."""
    parts = []
    for err in exc.errors():
        flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        parts.append(f"{flag}: {err['msg']}")
    return "; ".join(parts)
