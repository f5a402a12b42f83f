"""Django configuration of the database engine cases' processes (the pytest run of cases.py
and the worker processes it starts). The databases come from the environment, as JSON in
CSESSIONS_DB_DATABASES (tests/test_db_engines.py sets it: SQLite files, or databases on the
PostgreSQL server of tests/pg_server.py)."""

import json
import os

import django
from django.conf import settings

SESSION_MODELS = ("dbcase_app.SessionNote", "dbcase_app.LinkedSession", "dbcase_app.CustomSession",
                  "sessions.Session")  # in an order that deletes referencing rows first


def configure():
    if settings.configured:
        return
    settings.configure(
        SECRET_KEY="csessions-db-tests-secret-key-not-for-production",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django.contrib.sessions", "dbcase_app"],
        DATABASES=json.loads(os.environ["CSESSIONS_DB_DATABASES"]),
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        SESSION_ENGINE="csessions.backends.db",
        # No migrations: tables straight from the models (migrate --run-syncdb).
        MIGRATION_MODULES={"sessions": None, "dbcase_app": None},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()
    expect = os.environ.get("CSESSIONS_EXPECT_PATH")  # the sanitizer build, see tests/conftest.py
    if expect:
        import csessions._core

        where = os.path.realpath(csessions._core.__file__)
        assert where.startswith(os.path.realpath(expect)), f"csessions._core from {where}, not {expect}"


def create_tables():
    from django.core.management import call_command

    for alias in settings.DATABASES:
        call_command("migrate", run_syncdb=True, database=alias, verbosity=0, interactive=False)


def wipe():
    """Empties every session table in every database (plain DELETEs: no signals, no loading)."""
    from django.apps import apps
    from django.core.cache import caches
    from django.db import connections

    for alias in settings.DATABASES:
        connection = connections[alias]
        with connection.cursor() as cursor:
            for label in SESSION_MODELS:
                table = apps.get_model(label)._meta.db_table
                cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")
    caches["default"].clear()
