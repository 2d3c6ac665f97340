"""``qlass serve``: an OpenAI-compatible server over a local model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model_dir: Annotated[
            Path,
            typer.Argument(
                help="A transformers model directory with a chat template (e.g. the BC "
                "policy in runs/bc-policy).",
                file_okay=False,
            ),
        ],
        host: Annotated[
            str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option(help="TCP port; 0 lets the OS pick a free one (printed).")
        ] = 8000,
        model_name: Annotated[
            str | None,
            typer.Option(help="Name clients ask for (default: the directory's name)."),
        ] = None,
        device: Annotated[
            str, typer.Option(help="'cpu', 'cuda', 'cuda:1' or 'auto' (CUDA if available).")
        ] = "auto",
        max_batch: Annotated[
            int, typer.Option(min=1, help="Most sequences decoded together in one batch.")
        ] = 32,
        max_wait_ms: Annotated[
            float,
            typer.Option(min=0, help="How long a request waits for others to join its batch."),
        ] = 5.0,
        max_context: Annotated[
            int | None,
            typer.Option(help="Cap on prompt + completion tokens (default: the model's)."),
        ] = None,
        default_max_tokens: Annotated[
            int, typer.Option(min=1, help="Completion tokens when a request sets none.")
        ] = 256,
        trim_history: Annotated[
            bool,
            typer.Option(
                help="Drop the oldest turns of a conversation too long for the context "
                "(each response says how many) instead of refusing it with 400."
            ),
        ] = False,
        access_log: Annotated[
            bool, typer.Option(help="Log every HTTP request (uvicorn access log).")
        ] = False,
    ) -> None:
        """Serve MODEL_DIR at /v1/chat/completions (OpenAI-compatible), micro-batched.

        From qlass: backend 'litellm', model 'hosted_vllm/NAME', api_base 'http://HOST:PORT/v1'.

        Also serves /v1/models, /health and /stats. Stop with Ctrl-C.
        """
        from qlass.backends.hf import HFPolicy
        from qlass.backends.server import bind, create_app
        from qlass.backends.server import serve as run_server
        from qlass.errors import ConfigError

        try:  # before loading the model: a busy port should fail fast
            sock = bind(host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        try:
            policy = HFPolicy(
                model_dir,
                device=device,
                max_batch=max_batch,
                max_wait_s=max_wait_ms / 1000,
                model_name=model_name,
                max_context=max_context,
            )
        except BaseException:
            sock.close()
            raise
        app_ = create_app(policy, default_max_tokens=default_max_tokens, trim_history=trim_history)
        bound_port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        typer.echo(
            f"serving {policy.model_name!r} on {policy.device} at http://{shown}:{bound_port}/v1",
        )
        run_server(app_, sock, access_log=access_log)
