"""The test run's databases: URLs that never show their password, a server that is not
there named in one line."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from .conftest import UserSuite

pytest_plugins = ["pytester"]

# The runs are subprocesses: in-process runs re-import modules, which on CPython 3.11
# can trip "AST constructor recursion depth mismatch" in a later test's run.

PASSWORD = "Pl41nSekr1t-on-the-wire"

FIRST_TEST = """
async def test_the_notes_list_answers(client):
    assert (await client.get("/notes")).status_code == 200
"""

# The schema fails once the database is created: the traceback goes through the
# plugin's fixtures, whose arguments and locals hold the URLs.
FAILING_SCHEMA = """
import pytest

@pytest.fixture(scope="session")
def asyncdb_schema():
    async def create(database):
        raise RuntimeError("the schema failed on purpose")
    return create
"""


def _with_password(url: str) -> str:
    # Accepted by the test servers (PostgreSQL trusts local users; MariaDB's root has
    # none, so it refuses the login: the other path, the one-line error, is taken).
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.mark.backends("postgresql", "mysql")
def test_the_test_database_password_never_appears_in_a_long_traceback_with_locals(
    user_suite: UserSuite,
) -> None:
    assert user_suite.base_url is not None
    user_suite.base_url = _with_password(user_suite.base_url)
    user_suite.pytester.makeconftest(FAILING_SCHEMA)
    user_suite.pytester.makepyfile(test_first=FIRST_TEST)
    result = user_suite.run_in_subprocess("--tb=long", "--showlocals", "-rA")
    result.assert_outcomes(errors=1)
    output = result.stdout.str() + result.stderr.str()
    assert "the schema failed on purpose" in output or "is not usable" in output
    assert PASSWORD not in output
    assert "Pl41n" not in output


@pytest.mark.backends("postgresql", "mysql")
def test_a_base_database_that_does_not_exist_is_named_in_one_line(
    user_suite: UserSuite,
) -> None:
    assert user_suite.base_url is not None
    user_suite.base_url = (
        make_url(user_suite.base_url)
        .set(database="fixa_no_such_database")
        .render_as_string(hide_password=False)
    )
    user_suite.pytester.makepyfile(test_first=FIRST_TEST)
    result = user_suite.run_in_subprocess("--tb=long")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*the test database server is not usable: *fixa_no_such_database*must exist*"]
    )
    assert "Traceback" not in result.stdout.str()
    assert "site-packages" not in result.stdout.str()
