"""A corpus of bad inputs, one per thing a user gets wrong, for every command.

Each `Case` writes what it needs into its own folder (generators in files.py: nothing but code
is committed) and returns the command's argument list. `tests/test_bad_inputs.py` runs every case
through the command's `main(argv)` and asserts the exit status, one `error:` line naming the
option or file, no traceback, and every file (inputs, outputs, the trained run) unchanged.

`python -m tests.bad_inputs --repo PATH` runs the same corpus as subprocesses against another
checkout (for a before/after table; see __main__.py).
"""
