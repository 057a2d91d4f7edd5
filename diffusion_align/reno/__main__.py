"""``python -m diffusion_align.reno``: the ``reno`` command (:mod:`diffusion_align.reno.cli`)."""

from .cli import main

main()
