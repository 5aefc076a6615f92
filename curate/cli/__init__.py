"""The command line: a thin layer over the Python API. Every command takes ``--store``
(default ``$CURATE_STORE``, else ``./curate-store``). Expected failures print one line
(``error: ...``) and exit non-zero; they never print a traceback. Ctrl-C and SIGTERM stop
the command cleanly (the run is marked ``interrupted``, child processes are stopped),
print one ``interrupted (SIGINT|SIGTERM): ...`` line and exit 130 or 143.

One module per command family holds its commands; :data:`COMMANDS` below is the one
list of what ``curate`` offers. Command modules share :mod:`curate.cli.common` and never
import this module, so there is no import cycle."""

from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from . import clip, concepts, core, dedup, generate, knowledge, mix, report, shards, similarity, vectors
from .common import invoke

#: every top-level command (`curate --help` lists them by name)
COMMANDS: tuple[click.Command, ...] = (
    core.init, core.info, core.ingest, core.sql, core.run, core.stages, core.check,
    knowledge.knowledge, concepts.concepts, dedup.dedup,
    clip.download, clip.embed, vectors.vectors, similarity.similarity,
    mix.mix, mix.manifest_audit, report.report,
    shards.shards, generate.generate,
)


@click.group(commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="curate")
@click.option("-v", "--verbose", count=True, help="Log progress to stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """curate: caption-variant stores, audits and training mixtures for image-text data."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    """The ``curate`` program: run the CLI on ``argv`` (default ``sys.argv[1:]``), return the
    exit code. SIGINT and SIGTERM are handled while it runs (:func:`curate.procs.handle_signals`)
    and restored afterwards, so calling it in-process leaves the caller's handlers alone."""
    return invoke(cli, argv)
