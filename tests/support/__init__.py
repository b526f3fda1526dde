"""What the tests share besides fixtures: helper functions, constants and test servers.

pytest puts `tests/` on the import path (`pythonpath` in pyproject.toml), so a test imports these as
`from support.<module> import ...`; fixtures stay in the `conftest.py` files.
"""
