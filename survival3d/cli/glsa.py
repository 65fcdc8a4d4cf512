"""`run.py glsa`: placeholder until its issue lands (replace this whole module)."""

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError


@COMMANDS.register("glsa")
class _Placeholder:
    help = "(not implemented yet)"

    def add_arguments(self, parser):
        parser.add_argument("rest", nargs="*")

    def run(self, args):
        raise ConfigError("'glsa' is not implemented yet.")
