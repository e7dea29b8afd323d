"""`python -m loadtests PLAN --host URL ...`: the `paliserve loadtest` command on its own."""

import typer

from loadtests.cli import loadtest_command

typer.run(loadtest_command)
