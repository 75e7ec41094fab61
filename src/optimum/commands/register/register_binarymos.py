"""Adds ``optimum-cli binarymos <command>``; the commands themselves live in :mod:`optimum_binarymos.cli`.

Kept light: optimum imports every registration file when its CLI starts.
"""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from optimum_binarymos.cli import COMMANDS, run_command


def _leaf(command):
    class _Leaf(BaseOptimumCLICommand):
        COMMAND = CommandInfo(name=command.name, help=command.help)

        @staticmethod
        def parse_args(parser):
            command.add_arguments(parser)

        def run(self):
            code = run_command(command, self.args)
            if code:
                raise SystemExit(code)

    _Leaf.__name__ = f"BinaryMoS{command.name.title()}Command"
    return _Leaf


class BinaryMoSCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="binarymos", help="BinaryMoS 1-bit models: quantize, distill, evaluate, share")
    SUBCOMMANDS = tuple(
        CommandInfo(name=command.name, help=command.help, subcommand_class=_leaf(command))
        for command in COMMANDS
    )


REGISTER_COMMANDS = [BinaryMoSCommand]
