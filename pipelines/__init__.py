"""One module per DVC stage, and the `fersynth` CLI that runs them (cli.py stages, cli_tools.py user tools)."""
