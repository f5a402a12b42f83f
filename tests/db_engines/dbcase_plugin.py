"""pytest plugin of the database engine cases: ``pytest --noconftest -p dbcase_plugin cases.py``.

tests/test_db_engines.py runs cases.py in a child process per database (SQLite, PostgreSQL),
because tests/conftest.py configures Django for the rest of the suite without a database. This
plugin configures Django for the child instead (dbcase_setup), creates the tables, empties them
around every test, and writes each test's outcome as a JSON line to CSESSIONS_DB_REPORT, which
the parent turns into one test per case and database.
"""

import json
import os

import pytest

import dbcase_setup


def pytest_configure(config):
    dbcase_setup.configure()
    dbcase_setup.create_tables()


def pytest_runtest_logreport(report):
    path = os.environ.get("CSESSIONS_DB_REPORT")
    if not path or (report.when != "call" and report.passed):
        return
    with open(path, "a") as f:
        f.write(json.dumps({
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "longrepr": "" if report.passed else str(report.longrepr),
            "seconds": round(report.duration, 3),
        }) + "\n")


@pytest.fixture(autouse=True)
def _empty_tables():
    dbcase_setup.wipe()
    yield
    dbcase_setup.wipe()


def pytest_collection_modifyitems(config, items):
    """test_pg_* cases are for PostgreSQL only (processes and connections contending for the
    same rows): deselected on any other database."""
    from django.db import connections

    if connections["default"].vendor == "postgresql":
        return
    deselected = [item for item in items if item.name.startswith("test_pg_")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.name.startswith("test_pg_")]
