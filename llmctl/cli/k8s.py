"""`llmctl k8s`: render hardened Kubernetes manifests from the same config as the systemd units."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmctl.cli._common import (
    JsonOpt,
    OutputDirOpt,
    OutputDirShortOpt,
    command,
    complete_services,
    emit_json,
    info,
    load_config,
)

app = typer.Typer(
    help="Render hardened Kubernetes manifests (Deployment, Service, NetworkPolicy, ...) for the services.",
    no_args_is_help=True,
)


@command(app, "render")
def render_cmd(
    services: Annotated[
        list[str] | None,
        typer.Argument(help="Services to render (default: all).", show_default=False, autocompletion=complete_services),
    ] = None,
    output_dir: OutputDirOpt = None,
    json_out: JsonOpt = False,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace", "-n", help="Namespace of every object (default: k8s.namespace, llmctl).", show_default=False
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="The llmctl image (default: k8s.image); best pinned by digest, NAME@sha256:...",
            show_default=False,
        ),
    ] = None,
    _o: OutputDirShortOpt = None,
) -> None:
    """Render the Namespace, the config's ConfigMap and, per service, a Deployment, Service, PVC,
    NetworkPolicy, PodDisruptionBudget (and ServiceMonitor with k8s.service_monitor).

    Example: llmctl k8s render --image registry.example.com/llmctl@sha256:... --output-dir k8s/ && kubectl apply -f k8s/
    """
    from llmctl.errors import OperationFailed, UsageError
    from llmctl.fsutil import atomic_write_text
    from llmctl.k8s.render import K8sOptions, render

    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir: {output_dir} is not a directory")
    loaded = load_config()
    result = render(loaded.config, K8sOptions(namespace=namespace, image=image, paths=loaded.paths), services or None)
    for warning in result.warnings:
        info(f"Warning: {warning}")
    for secret in result.secrets:
        info(
            f"Note: the pods of '{secret.service}' mount the Secret {secret.name} ("
            f"{', '.join(k for k, _ in secret.keys)}); create it first: {secret.create_command(result.namespace)}"
        )
    if output_dir is not None:
        for f in result.files:  # each file whole or not at all
            try:
                atomic_write_text(output_dir / f.name, f.content)
            except OSError as exc:
                raise OperationFailed(f"cannot write {output_dir / f.name}: {exc.strerror or exc}") from None
    if json_out:
        emit_json(
            "k8s.render",
            {
                "namespace": result.namespace,
                "image": result.image,
                "files": [
                    {
                        "name": f.name,
                        "service": f.service,
                        "objects": [{"kind": k, "name": n} for k, n in f.objects],
                        **({"path": str(output_dir / f.name)} if output_dir else {"content": f.content}),
                    }
                    for f in result.files
                ],
                "secrets": [
                    {
                        "name": s.name,
                        "service": s.service,
                        "keys": [k for k, _ in s.keys],
                        "create_command": s.create_command(result.namespace),
                    }
                    for s in result.secrets
                ],
                "warnings": list(result.warnings),
            },
        )
        return
    if output_dir is not None:
        sys.stdout.write("".join(str(output_dir / f.name) + "\n" for f in result.files))
        return
    sys.stdout.write(result.stream)
