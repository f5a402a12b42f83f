"""csessions.backends.db and csessions.backends.cached_db, on SQLite and on a real PostgreSQL.

Why child processes: tests/conftest.py configures Django once for the whole suite, without a
database (DATABASES={}), and a process's Django settings cannot be configured twice (swapping
DATABASES under a configured Django means patching private state of django.db.connections, for
every other test module too). So the database cases (tests/db_engines/cases.py) run in one child
pytest per database, with settings of their own (tests/db_engines/dbcase_setup.py): two SQLite
files in a temporary directory, or two databases on the PostgreSQL server that
tests/pg_server.py starts for this test session. Both children run at the same time.

Each case function of the child becomes one test here, ``test_case[<database>-<case>]``: it
passes if every parametrization of that case passed in the child, and shows the child's
failure report otherwise. A skip in the child fails too: these tests never skip. ``test_pg_*``
cases run on PostgreSQL only (processes and connections contending for the same rows).

Tests of the class structure, which need no database, run here in the suite's configuration.
"""

import ast
import importlib
import json
import os
import subprocess
import sys
import time

import pytest
from django.contrib.sessions.backends import cached_db as dj_cached_db
from django.contrib.sessions.backends import db as dj_db
from django.core.cache.backends.base import InvalidCacheBackendError
from django.test import override_settings

import csessions
import pg_server
from csessions.backends import cached_db as cs_cached_db
from csessions.backends import db as cs_db
from pg_server import postgresql_server  # noqa: F401 - fixture

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CASES_DIR = os.path.join(HERE, "db_engines")
CASES = os.path.join(CASES_DIR, "cases.py")
CHILD_TIMEOUT = 300
DATABASES = ("sqlite", "postgresql")


def _case_names():
    with open(CASES) as f:
        tree = ast.parse(f.read())
    return [node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")]


CASE_PARAMS = [
    pytest.param(database, name, id=f"{database}-{name}")
    for database in DATABASES
    for name in _case_names()
    if database == "postgresql" or not name.startswith("test_pg_")
]


class ChildRun:
    """``pytest cases.py`` in a child process with the given DATABASES."""

    def __init__(self, database, databases, tmp):
        self.database = database
        self.report = os.path.join(tmp, f"{database}-report.jsonl")
        env = dict(os.environ)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        # The csessions this suite imports (the checkout, or the sanitizer build's copy).
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(csessions.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (CASES_DIR, package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["CSESSIONS_DB_DATABASES"] = json.dumps(databases)
        env["CSESSIONS_DB_REPORT"] = self.report
        self.cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                    "-p", "dbcase_plugin", "-c", os.path.join(REPO, "pyproject.toml"), "--rootdir", REPO, CASES]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def finish(self):
        try:
            self.output, _ = self.proc.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0] + f"\n[killed after {CHILD_TIMEOUT}s]"
        self.seconds = time.monotonic() - self.started
        self.results = {}  # case function name -> [report entries]
        if os.path.exists(self.report):
            with open(self.report) as f:
                for line in f:
                    entry = json.loads(line)
                    name = entry["nodeid"].split("::")[-1].split("[")[0]
                    self.results.setdefault(name, []).append(entry)
        return self

    def tail(self, lines=60):
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


@pytest.fixture(scope="module")
def child_runs(request, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("db-engines"))
    sqlite = {alias: {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(tmp, f"{alias}.sqlite3")}
              for alias in ("default", "other")}
    runs = {"sqlite": ChildRun("sqlite", sqlite, tmp)}  # starts while PostgreSQL starts
    try:
        server = request.getfixturevalue("postgresql_server")
        pg = {alias: server.django_database(server.create_database(f"csessions_{alias}"))
              for alias in ("default", "other")}
        runs["postgresql"] = ChildRun("postgresql", pg, tmp)
    except pytest.fail.Exception as exc:  # no PostgreSQL: its cases fail with this, SQLite's run
        runs["postgresql"] = str(exc)
    finally:
        for run in runs.values():
            if isinstance(run, ChildRun):
                run.finish()
    return runs


def _run(child_runs, database):
    run = child_runs[database]
    if isinstance(run, str):
        pytest.fail(run, pytrace=False)
    return run


@pytest.mark.parametrize("database, case", CASE_PARAMS)
def test_case(child_runs, database, case):
    run = _run(child_runs, database)
    entries = run.results.get(case)
    if not entries:
        pytest.fail(f"{case} did not run on {database} ({' '.join(run.cmd)}):\n{run.tail()}", pytrace=False)
    bad = [e for e in entries if e["outcome"] != "passed"]
    if bad:
        report = "\n\n".join(f"{e['nodeid']} ({e['when']}: {e['outcome']})\n{e['longrepr']}" for e in bad)
        pytest.fail(f"{len(bad)} of {len(entries)} reports of {case} on {database} did not pass:\n{report}",
                    pytrace=False)


@pytest.mark.parametrize("database", DATABASES)
def test_child_run_complete(child_runs, database):
    """The child ran to the end: exit status 0, or 1 with the failures reported per case."""
    run = _run(child_runs, database)
    failed = any(e["outcome"] != "passed" for entries in run.results.values() for e in entries)
    ok = run.proc.returncode == 0 or (run.proc.returncode == 1 and failed)
    assert ok, f"child pytest exited with {run.proc.returncode} ({' '.join(run.cmd)}):\n{run.tail()}"
    expected = {case for db, case in (p.values for p in CASE_PARAMS) if db == database}
    assert set(run.results) == expected, (sorted(set(run.results) - expected), sorted(expected - set(run.results)))


# ------------------------------------------------------------------ no database needed


ENGINES = [(cs_db, dj_db), (cs_cached_db, dj_cached_db)]


@pytest.mark.parametrize("ours, django", ENGINES, ids=["db", "cached_db"])
def test_subclasses_djangos_engine(ours, django):
    assert issubclass(ours.SessionStore, django.SessionStore)
    assert ours.SessionStore.__qualname__ == "SessionStore"  # key_salt, get_decoded(), admin
    assert ours.SessionStore().key_salt == django.SessionStore().key_salt == "django.contrib.sessions.SessionStore"
    assert ours.SessionStore.get_model_class() is django.SessionStore.get_model_class()
    mine, theirs = ours.SessionStore("k" * 32), django.SessionStore("k" * 32)
    assert vars(mine) == vars(theirs)  # CSessionMixin.__init__ replaces Django's


def test_cached_db_keeps_every_method_of_djangos_cached_db():
    """csessions' db class and CSessionMixin come before Django's cached_db class in the MRO:
    neither may hide a method of it (cache reads, writes, logging, exists() from the cache)."""
    for name, value in vars(dj_cached_db.SessionStore).items():
        if name in ("__init__", "__module__", "__doc__", "__qualname__", "__firstlineno__",
                    "__static_attributes__", "__dict__", "__weakref__"):
            continue
        assert getattr(cs_cached_db.SessionStore, name) is getattr(dj_cached_db.SessionStore, name), name
    assert cs_cached_db.SessionStore.clear_expired.__func__ is cs_db.SessionStore.clear_expired.__func__
    assert cs_cached_db.KEY_PREFIX == dj_cached_db.KEY_PREFIX
    assert issubclass(cs_cached_db.SessionStore, cs_db.SessionStore)


def test_cached_db_unknown_cache_alias():
    with override_settings(SESSION_CACHE_ALIAS="sessions"):
        with pytest.raises(InvalidCacheBackendError):
            cs_cached_db.SessionStore()


def test_clear_batch_setting_documented():
    doc = importlib.import_module("csessions.backends.db").__doc__
    assert "CSESSIONS_CLEAR_BATCH" in doc and f"default {cs_db.DEFAULT_CLEAR_BATCH}" in doc
    assert "CSESSIONS_CLEAR_BATCH" in cs_cached_db.__doc__


def test_missing_postgresql_fails_naming_the_package(tmp_path):
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version dir without the server binaries
    with pytest.raises(pg_server.PostgresError, match="apt-get install postgresql"):
        pg_server.find_bin_dir(root=str(tmp_path))
