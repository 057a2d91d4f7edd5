import sys

from mmalign.cli import cli

sys.exit(cli())
