"""`python -m broker.cli`: zbroker, for child processes started with this interpreter."""

from broker.cli import app

app()
