"""`omnibed image`: build, list and remove the root filesystem images of container vnodes.

Errors propagate to `omnibed.cli.main`, which prints them as one line.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from omnibed.cli.common import _help_without_command, _progress, out
from omnibed.emulator import images

image_app = typer.Typer(
    help="Root filesystem images for container vnodes (Debian, built with mmdebstrap).",
    invoke_without_command=True,
    callback=_help_without_command,
)
ImageName = Annotated[str, typer.Argument(help="Image name, as `omnibed image ls` shows it.")]


@image_app.command("build")
def image_build(
    name: ImageName,
    packages: Annotated[
        str, typer.Option(help="Debian packages to install, comma-separated.")
    ] = ",".join(images.DEFAULT_PACKAGES),
    suite: Annotated[str, typer.Option(help="Debian suite.")] = images.DEFAULT_SUITE,
    arch: Annotated[
        str | None,
        typer.Option(help=f"Architecture: {', '.join(images.ARCHES)} (default: this machine's)."),
    ] = None,
) -> None:
    """Build a Debian rootfs image (minbase plus PACKAGES) and cache it under NAME."""
    wanted = [p.strip() for p in packages.split(",") if p.strip()]
    what = f"building image {name} ({suite}, {arch or images.host_arch()})"
    with _progress(what) as progress:
        image = images.build(name, wanted, suite, arch, progress=progress)
    out.print(
        f"image {image.name}: sha256 {image.sha256}, {image.size / 2**20:.0f} MiB, {image.path}",
        highlight=False,
        soft_wrap=True,
    )


@image_app.command("ls")
def image_ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the cached images."""
    cached = images.images()
    if as_json:
        print(json.dumps([images.as_dict(image) for image in cached], indent=2))
        return
    table = Table("name", "sha256", "arch", "suite", "MiB", "packages")
    for image in cached:
        table.add_row(
            image.name,
            image.sha256[:16],
            image.arch,
            image.suite,
            f"{image.size / 2**20:.0f}",
            ",".join(image.packages),
        )
    out.print(table)


@image_app.command("rm")
def image_rm(name: ImageName) -> None:
    """Remove an image from the cache."""
    image = images.remove(name)
    out.print(f"removed image {image.name} ({image.sha256[:16]})", highlight=False)
