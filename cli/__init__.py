"""The `dsb` command-line interface (Typer). Commands only parse options and call dsb."""
