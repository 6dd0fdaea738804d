"""``swift-accel serve``: the OpenAI-compatible HTTP server, from the command line.

The server itself is :mod:`swift_integrations.serve` (also ``python -m swift_integrations.serve``);
this command only maps its options onto ``start`` - imported when the command runs, through the
package's lazy exports, so the rest of the CLI never needs FastAPI or Ray.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from swift_integrations.cli.guard import guard
from swift_integrations.cli.loading import model_arg
from swift_integrations.cli.options import DeviceOpt, DtypeOpt, GgufOpt, ModelOpt, ProfileDirOpt


def serve(
    ctx: typer.Context,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (not loopback: needs --api-key).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", help="Bearer token clients must send (default: $SWIFT_API_KEY).")
    ] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Requests admitted at once (429 past it).")] = 16,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=0.001, help="Seconds one generation may take.")
    ] = 300.0,
    profile_dir: ProfileDirOpt = None,
    served_model_name: Annotated[
        Optional[list[str]],
        typer.Option(
            "--served-model-name",
            "--model-name",
            help="The model id clients see and send (default: --model); repeat it for aliases, as vLLM's flag.",
        ),
    ] = None,
    tool_followup: Annotated[
        str,
        typer.Option(
            "--tool-followup",
            help="After tool results: ask for the answer ('answer'), let the model decide ('model'), or as "
            "measured for catalog models ('auto').",
        ),
    ] = "auto",
    batch_rows: Annotated[
        Optional[int],
        typer.Option(
            "--batch-rows",
            min=0,
            help="Rows one pass holds for concurrent requests (continuous batching on int4/int8; 0: requests "
            "take turns on the model). Default: the engine's (16).",
        ),
    ] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Serve engine replicas on Ray Serve (the ray extra).")] = False,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="With --ray: replicas (autoscaling: the minimum).")
    ] = 2,
    max_replicas: Annotated[
        Optional[int], typer.Option("--max-replicas", min=1, help="With --ray: autoscale up to this many replicas.")
    ] = None,
    replica_cpus: Annotated[
        float, typer.Option("--replica-cpus", min=0.01, help="With --ray: Ray CPUs (and torch threads) per replica.")
    ] = 1.0,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="With --ray: share profiles through --profile-dir ('directory': one machine or a shared "
            "filesystem) or a Ray actor on the head node ('actor': no shared disk).",
        ),
    ] = "directory",
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", help="With --ray: an existing cluster (default: $RAY_ADDRESS).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    with guard(ctx):
        from swift_integrations.serve import start

        start(
            model_arg(model),
            ray=ray,
            replicas=replicas,
            max_replicas=max_replicas,
            replica_cpus=replica_cpus,
            store=store,
            ray_address=ray_address,
            gguf_file=gguf_file,
            device=device,
            dtype=dtype,
            host=host,
            port=port,
            api_key=api_key,
            max_queue=max_queue,
            request_timeout=request_timeout,
            profile_dir=None if profile_dir is None else str(profile_dir),
            model_name=served_model_name or None,
            tool_followup=tool_followup,
            batch_rows=batch_rows,
        )
