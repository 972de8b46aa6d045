"""``python -m cht_interop`` is the ``cht-interop`` command."""

from cht_interop.cli import app

app()
