"""``python -m diffusion_align.reno``: the ``reno`` command (:mod:`diffusion_align.reno.cli`)."""

import sys

from .cli import cli

sys.exit(cli())
