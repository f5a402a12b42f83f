"""csessions.backends.db and cached_db against a real database.

Run by tests/test_db_engines.py in a child process per database (SQLite, PostgreSQL); see
dbcase_plugin.py. Every test runs on both, except ``test_pg_*`` (PostgreSQL only: several processes
and connections writing the same rows at once, row locks). Each test starts with empty tables
and an empty cache.
"""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.sessions.backends import cached_db as dj_cached_db
from django.contrib.sessions.backends import db as dj_db
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.contrib.sessions.models import Session
from django.core import signing
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections, transaction
from django.db.models.signals import post_delete, pre_delete
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from csessions.backends import cached_db as cs_cached_db
from csessions.backends import db as cs_db
from dbcase_app.models import CustomSession, LinkedSession, SessionNote
from dbcase_app.custom_cached_db import SessionStore as CustomCachedStore
from dbcase_app.custom_db import SessionStore as CustomStore
from dbcase_app.linked_db import SessionStore as LinkedStore

HERE = os.path.dirname(os.path.abspath(__file__))
VENDOR = connections["default"].vendor
SALT = "django.contrib.sessions.SessionStore"

DJANGO = {"django.db": dj_db.SessionStore, "django.cached_db": dj_cached_db.SessionStore}
OURS = {"csessions.db": cs_db.SessionStore, "csessions.cached_db": cs_cached_db.SessionStore}
ALL = {**DJANGO, **OURS}

DATA = {
    "_auth_user_id": "42",
    "cart": [1, 2.5, None, True, {"sku": "é-ü-€-😀"}],
    "note": "x" * 9000,  # above STORE_COMPRESS_ABOVE: stored compressed, with the "." prefix
}


def deletes(captured):
    return [q["sql"] for q in captured if q["sql"].lstrip().upper().startswith("DELETE")]


def shape(captured):
    """The statements' first words: BEGIN/COMMIT are logged by Django's atomic() as well."""
    return [q["sql"].split(None, 1)[0].upper() for q in captured]


def batches(n):
    """What n batches look like: each one DELETE in a transaction of its own."""
    return ["BEGIN", "DELETE", "COMMIT"] * n


def add_rows(n_expired, n_live, model=Session, using="default", prefix=""):
    """Rows straight into the table (no engine, no signals): expired ones 1 h + i s ago."""
    now = timezone.now()
    data = cs_db.SessionStore().encode({"n": 1})
    rows = [model(session_key=f"{prefix}exp{i:08d}", session_data=data,
                  expire_date=now - timedelta(hours=1, seconds=i)) for i in range(n_expired)]
    rows += [model(session_key=f"{prefix}live{i:08d}", session_data=data,
                   expire_date=now + timedelta(hours=1, seconds=i)) for i in range(n_live)]
    model._base_manager.using(using).bulk_create(rows)
    return [r.session_key for r in rows[n_expired:]]


def keys(model=Session, using="default"):
    return sorted(model._base_manager.using(using).values_list("session_key", flat=True))


class Receivers:
    """pre_delete/post_delete receivers, for every sender and for the model itself."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, sender, **kwargs):
        self.calls.append((sender, kwargs["instance"].pk))

    def __enter__(self):
        for signal in (pre_delete, post_delete):
            signal.connect(self, weak=False, dispatch_uid="any")
            signal.connect(self, sender=self.model, weak=False, dispatch_uid="model")
        return self

    def __exit__(self, *exc):
        for signal in (pre_delete, post_delete):
            signal.disconnect(dispatch_uid="any")
            signal.disconnect(sender=self.model, dispatch_uid="model")


def refuse_row_loading(monkeypatch):

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"a {cls.__name__} row was loaded into Python")

    for model in (Session, CustomSession):
        monkeypatch.setattr(model, "from_db", classmethod(refuse))


@pytest.fixture
def no_row_loading(monkeypatch):
    """Any session model instance built from a database row fails the test."""
    refuse_row_loading(monkeypatch)


def other_connection():
    """A second connection to the default database, outside Django."""
    db = settings.DATABASES["default"]
    if VENDOR == "sqlite":
        return sqlite3.connect(db["NAME"])
    import psycopg

    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"],
                           autocommit=True)


def count_rows(conn, table, expired_before=None):
    sql = f'SELECT count(*) FROM "{table}"'
    if expired_before is None:
        return conn.execute(sql).fetchone()[0]
    value = connections["default"].ops.adapt_datetimefield_value(expired_before)
    mark = "?" if VENDOR == "sqlite" else "%s"
    return conn.execute(sql + f" WHERE expire_date < {mark}", [value]).fetchone()[0]


# ------------------------------------------------------------------------ rows both engines read


@pytest.mark.parametrize("reader", ALL)
@pytest.mark.parametrize("writer", ALL)
def test_cross_read(writer, reader):
    """A row written by either engine family loads in the other (DB path: cache cleared), and
    a change saved by the reader is what the writer loads next. (Pairs within one family are
    the control.)"""
    w = ALL[writer]()
    w.update(DATA)
    w.set_expiry(600)
    w.save()
    key = w.session_key
    caches["default"].clear()
    r = ALL[reader](key)
    assert dict(r.items()) == {**DATA, "_session_expiry": 600}
    assert r.get_expiry_age() == 600
    r["cart"] = "changed"
    r.save()
    caches["default"].clear()
    again = ALL[writer](key)
    assert again["cart"] == "changed" and again["note"] == DATA["note"]
    assert keys() == [key]


@pytest.mark.parametrize("engine", OURS)
def test_rows_are_djangos(engine):
    s = OURS[engine]()
    s.update(DATA)
    s.save()
    row = Session.objects.get()
    assert row.session_key == s.session_key and len(row.session_key) == 32
    assert set(row.session_key) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert row.session_data.startswith(".")  # compressed (at zlib's fastest level)
    assert signing.loads(row.session_data, salt=SALT) == DATA  # Django's own codec reads it
    assert row.get_decoded() == DATA  # Session.get_decoded(): the admin's view
    assert str(row) == s.session_key
    assert abs(row.expire_date - (timezone.now() + timedelta(seconds=settings.SESSION_COOKIE_AGE))) \
        < timedelta(seconds=5)
    # What Django's engine writes for the same data decodes to the same.
    d = dj_db.SessionStore()
    d.update(DATA)
    d.save()
    assert Session.objects.get(pk=d.session_key).get_decoded() == DATA
    # Below STORE_COMPRESS_ABOVE bytes of JSON the row is not compressed; Django reads it too.
    small = OURS[engine]()
    small.update({"a": "y" * 500})
    small.save()
    row = Session.objects.get(pk=small.session_key)
    assert not row.session_data.startswith(".")
    assert signing.loads(row.session_data, salt=SALT) == row.get_decoded() == {"a": "y" * 500}


@pytest.mark.parametrize("engine", OURS)
def test_session_manager_rows(engine):
    """Rows from Session.objects.save() (Django's manager, Django's encoder) load here."""
    expire = timezone.now() + timedelta(days=1)
    Session.objects.save("m" * 32, {"a": [1, 2]}, expire)
    assert OURS[engine]("m" * 32).load() == {"a": [1, 2]}
    Session.objects.save("m" * 32, {}, expire)  # an empty dict deletes the row
    assert keys() == []


@pytest.mark.parametrize("engine", OURS)
def test_djangos_behaviour_kept(engine):
    """A few of Django's db behaviours, end to end (Django's own suite covers the rest)."""
    store = OURS[engine]
    s = store()
    s["a"] = 1
    s.save()
    key = s.session_key
    stale = store(key)
    stale["b"] = 2
    s.delete()
    with pytest.raises(UpdateError):  # no resurrection of a deleted session
        stale.save()
    s2 = store(key)
    s2._session_cache = {"c": 3}
    s2.save(must_create=True)
    with pytest.raises(CreateError):
        store(key).save(must_create=True)
    assert store("nonexistent-key-00000").load() == {}
    s = store()
    s["x"] = 1
    s.set_expiry(-1)
    s.save()
    assert store(s.session_key).load() == {}  # expired rows do not load
    assert async_to_sync(store(key).aload)() == {"c": 3}


def test_cached_db_exists_from_cache_without_queries():
    s = cs_cached_db.SessionStore()
    s["a"] = 1
    s.save()
    with CaptureQueriesContext(connections["default"]) as ctx:
        assert s.exists(s.session_key)
    assert ctx.captured_queries == []


# --------------------------------------------------------------------------- clear_expired


@pytest.mark.parametrize("engine", OURS)
def test_clearsessions_command(engine):
    live = add_rows(23, 4)
    with override_settings(SESSION_ENGINE=cs_db.__name__ if engine.endswith(".db") else cs_cached_db.__name__,
                           CSESSIONS_CLEAR_BATCH=10):
        with CaptureQueriesContext(connections["default"]) as ctx:
            call_command("clearsessions")
    assert keys() == live
    assert shape(ctx.captured_queries) == batches(3), ctx.captured_queries


@pytest.mark.parametrize("engine", OURS)
def test_clear_expired_with_delete_signals_loads_no_rows(engine, no_row_loading):
    live = add_rows(25, 5)
    with Receivers(Session) as receivers, override_settings(CSESSIONS_CLEAR_BATCH=10):
        with CaptureQueriesContext(connections["default"]) as ctx:
            assert OURS[engine].clear_expired() == 25
    assert receivers.calls == []
    assert keys() == live
    assert shape(ctx.captured_queries) == batches(3), ctx.captured_queries  # no SELECT
    assert all("LIMIT 10" in sql for sql in deletes(ctx.captured_queries))


def test_receivers_would_see_djangos_clear_expired():
    """Control for the test above: the same receivers do fire, for every row, with Django's
    engine (it loads the rows)."""
    add_rows(25, 5)
    with Receivers(Session) as receivers:
        dj_db.SessionStore.clear_expired()
    assert len(receivers.calls) == 25 * 4  # pre + post, each to both receivers
    assert len(keys()) == 5


@pytest.mark.parametrize("expired, batch", [(0, 10), (9, 10), (10, 10), (25, 10), (30, 10), (7, 1)])
def test_batch_size_honoured(expired, batch):
    live = add_rows(expired, 3)
    with override_settings(CSESSIONS_CLEAR_BATCH=batch):
        with CaptureQueriesContext(connections["default"]) as ctx:
            assert cs_db.SessionStore.clear_expired() == expired
    assert shape(ctx.captured_queries) == batches(expired // batch + 1), ctx.captured_queries
    assert all(f"LIMIT {batch}" in sql for sql in deletes(ctx.captured_queries))
    assert keys() == live


def test_default_batch_size():
    add_rows(3, 1)
    with CaptureQueriesContext(connections["default"]) as ctx:
        assert cs_db.SessionStore.clear_expired() == 3
    assert cs_db.clear_batch_size() == cs_db.DEFAULT_CLEAR_BATCH == 10_000
    [statement] = deletes(ctx.captured_queries)
    assert "LIMIT 10000" in statement
    assert "ORDER BY" in statement  # oldest first, through the expire_date index


@pytest.mark.parametrize("value", [0, -5, "100", 2.5, True, None])
def test_invalid_batch_setting(value):
    add_rows(3, 1)
    with override_settings(CSESSIONS_CLEAR_BATCH=value):
        with CaptureQueriesContext(connections["default"]) as ctx:
            with pytest.raises(ImproperlyConfigured, match="CSESSIONS_CLEAR_BATCH"):
                cs_db.SessionStore.clear_expired()
    assert ctx.captured_queries == []
    assert len(keys()) == 4


def test_each_batch_is_its_own_committed_transaction():
    """Before each DELETE runs, another connection already sees the previous batches gone
    (committed), and the DELETE runs in a transaction of its own (the outermost one)."""
    add_rows(25, 5)
    now = timezone.now()
    conn = other_connection()
    seen = []

    def before_delete(execute, sql, params, many, context):
        if sql.lstrip().startswith("DELETE"):
            connection = connections["default"]
            assert connection.in_atomic_block and len(connection.atomic_blocks) == 1
            assert not connection.get_autocommit()
            seen.append(count_rows(conn, "django_session", expired_before=now))
        return execute(sql, params, many, context)

    try:
        with override_settings(CSESSIONS_CLEAR_BATCH=10):
            with connections["default"].execute_wrapper(before_delete):
                assert cs_db.SessionStore.clear_expired() == 25
    finally:
        conn.close()
    assert seen == [25, 15, 5]
    assert not connections["default"].in_atomic_block


def test_inside_a_callers_transaction():
    """Called inside atomic(), the batches are savepoints of the caller's transaction: they
    roll back with it."""
    add_rows(12, 2)
    with override_settings(CSESSIONS_CLEAR_BATCH=5):
        with pytest.raises(ZeroDivisionError):
            with transaction.atomic():
                assert cs_db.SessionStore.clear_expired() == 12
                assert len(keys()) == 2
                1 / 0
    assert len(keys()) == 14


@pytest.mark.parametrize("engine", OURS)
def test_aclear_expired(engine, no_row_loading):
    live = add_rows(21, 2)
    with Receivers(Session) as receivers, override_settings(CSESSIONS_CLEAR_BATCH=4):
        assert async_to_sync(OURS[engine].aclear_expired)() == 21
    assert receivers.calls == [] and keys() == live


@pytest.mark.parametrize("store", [CustomStore, CustomCachedStore], ids=["db", "cached_db"])
def test_custom_model(store, monkeypatch):
    """get_model_class() decides the table; other session tables are not touched."""
    live_custom = add_rows(13, 3, model=CustomSession)
    add_rows(4, 1)  # django_session: not this store's table
    s = store()
    s.update({"account_id": 7})
    s.save()
    row = CustomSession.objects.get(pk=s.session_key)
    assert row.get_decoded() == {"account_id": 7}
    assert row.account_id == (7 if store is CustomStore else None)
    refuse_row_loading(monkeypatch)
    with Receivers(CustomSession) as receivers, override_settings(CSESSIONS_CLEAR_BATCH=5):
        with CaptureQueriesContext(connections["default"]) as ctx:
            assert store.clear_expired() == 13
    assert receivers.calls == []
    assert keys(CustomSession) == sorted(live_custom + [s.session_key])
    assert len(keys()) == 5
    assert shape(ctx.captured_queries) == batches(3)
    assert all("csessions_custom_session" in q for q in deletes(ctx.captured_queries))


def test_rows_that_must_cascade_go_through_djangos_collector():
    """Notes point at LinkedSession with on_delete=CASCADE: each batch is deleted by Django's
    Collector (the notes go too, signals are sent as Django sends them), a batch at a time."""
    add_rows(12, 2, model=LinkedSession)
    for session in LinkedSession.objects.all():
        SessionNote.objects.create(session=session, text=session.session_key[:20])
    assert cs_db._needs_collector(LinkedSession, "default")
    assert not cs_db._needs_collector(Session, "default")
    with Receivers(LinkedSession) as receivers, override_settings(CSESSIONS_CLEAR_BATCH=5):
        with CaptureQueriesContext(connections["default"]) as ctx:
            assert LinkedStore.clear_expired() == 12
    assert len(keys(LinkedSession)) == 2
    assert SessionNote.objects.count() == 2
    assert len([c for c in receivers.calls if c[0] is LinkedSession]) == 12 * 4
    selects = [q["sql"] for q in ctx.captured_queries if "LIMIT 5" in q["sql"]]
    assert len(selects) == 3  # the candidate keys, a batch at a time


def test_write_database_from_router():
    add_rows(6, 1, using="other")
    live_default = add_rows(5, 1)
    with override_settings(DATABASE_ROUTERS=["dbcase_app.routers.SessionsToOther"],
                           CSESSIONS_CLEAR_BATCH=4):
        with CaptureQueriesContext(connections["other"]) as ctx:
            assert cs_db.SessionStore.clear_expired() == 6
        s = cs_db.SessionStore()
        s["a"] = 1
        s.save()
    assert len(deletes(ctx.captured_queries)) == 2
    assert keys(using="other") == sorted(["live00000000", s.session_key])
    assert len(keys()) == 6 and set(live_default) <= set(keys())


@pytest.mark.parametrize("use_tz, time_zone", [(True, "UTC"), (False, "UTC"), (False, "Asia/Kathmandu"),
                                               (True, "America/Chicago")])
def test_expiry_boundary_with_time_zones(use_tz, time_zone):
    """Sessions 40 s past their expiry go, sessions 40 s before it stay, with naive and aware
    datetimes and a time zone far from UTC: the same rows Django's filter calls expired."""
    with override_settings(USE_TZ=use_tz, TIME_ZONE=time_zone):
        stores = {}
        for name, seconds in (("past", -40), ("soon", 40), ("later", 3 * 3600)):
            s = cs_db.SessionStore()
            s["name"] = name
            s.set_expiry(seconds)
            s.save()
            stores[name] = s.session_key
        expected = Session.objects.filter(expire_date__lt=timezone.now()).count()
        assert expected == 1
        assert cs_db.SessionStore.clear_expired() == 1
        assert keys() == sorted([stores["soon"], stores["later"]])


# ----------------------------------------------------------------------- PostgreSQL: concurrency


def _pg_backend_waiting_for_lock(conn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND query LIKE 'DELETE%'").fetchone()
        if row[0]:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("meanwhile", ["saved with a new expiry", "deleted"])
def test_pg_session_changed_while_a_batch_waits(meanwhile):
    """A request holds the lock of an expired session's row (it is saving it with a new
    expiry, or deleting it); the batch waits for it, then rechecks the row: a saved session is
    kept, a deleted one is not counted. No error either way."""
    add_rows(4, 1)
    key = "exp00000002"
    request = other_connection()
    request.autocommit = False
    if meanwhile == "deleted":
        request.execute("DELETE FROM django_session WHERE session_key = %s", [key])
    else:
        request.execute("UPDATE django_session SET expire_date = now() + interval '1 day' "
                        "WHERE session_key = %s", [key])
    result = {}

    def clear():
        try:
            result["deleted"] = cs_db.SessionStore.clear_expired()
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=clear)
    thread.start()
    watcher = other_connection()
    try:
        assert _pg_backend_waiting_for_lock(watcher), "the batch never waited for the row lock"
    finally:
        request.commit()
        request.close()
        watcher.close()
        thread.join(30)
    assert "error" not in result, result
    if meanwhile == "deleted":
        assert result["deleted"] == 3 and keys() == ["live00000000"]
    else:
        assert result["deleted"] == 3 and keys() == [key, "live00000000"]
        assert Session.objects.get(pk=key).expire_date > timezone.now()


def test_pg_two_clearers_at_once():
    """Two clearsessions runs overlapping (two cron jobs): both finish, no deadlock, each
    expired row counted once."""
    live = add_rows(3000, 10)
    results, errors = [], []
    barrier = threading.Barrier(2)

    def clear():
        try:
            barrier.wait()
            with override_settings(CSESSIONS_CLEAR_BATCH=100):
                results.append(cs_db.SessionStore.clear_expired())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=clear) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sum(results) == 3000, (results, errors)
    assert keys() == live


def test_pg_clear_while_requests_save():
    """Requests keep loading and saving live sessions while expired ones are cleared in
    small batches: no live session is lost or changed behind the request's back."""
    add_rows(4000, 0)
    live = []
    for i in range(20):
        s = cs_db.SessionStore()
        s["seq"] = 0
        s.save()
        live.append(s.session_key)
    stop = threading.Event()
    problems, saves = [], [0]

    def requests():
        try:
            seq = 0
            while not stop.is_set():
                seq += 1
                for key in live:
                    s = cs_db.SessionStore(key)
                    if s.get("seq") != seq - 1:
                        problems.append((key, dict(s.items())))
                    s["seq"] = seq
                    s.save()
                    saves[0] += 1
        except BaseException as exc:  # noqa: BLE001
            problems.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=requests)
    thread.start()
    try:
        with override_settings(CSESSIONS_CLEAR_BATCH=100):
            assert cs_db.SessionStore.clear_expired() == 4000
    finally:
        stop.set()
        thread.join(30)
    assert problems == []
    assert saves[0] > 0
    assert keys() == sorted(live)


def test_pg_concurrent_processes():
    """Two processes create, save, load-modify-save and delete the same sessions (and some of
    their own) at once, with both engines: the only errors are CreateError and UpdateError,
    every row and every load is an intact value some writer wrote, and each process's own
    sessions end exactly as that process last left them."""
    shared = [f"shared{i:04d}" for i in range(4)]
    workers = []
    for writer in ("A", "B"):
        args = {"writer": writer, "seed": ord(writer), "shared": shared,
                "own": [f"own{writer}{i:04d}" for i in range(6)], "iterations": 400}
        workers.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "worker.py"), json.dumps(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for w in workers:
            line = w.stdout.readline()
            assert line == "READY\n", (line, w.stderr.read())
        for w in workers:  # both go at once
            w.stdin.write("go\n")
            w.stdin.flush()
        outputs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    total = {k: sum(r["counts"][k] for r in reports) for k in reports[0]["counts"]}
    assert total["CreateError"] and total["UpdateError"], total  # contention did happen
    assert total["create"] and total["update"] and total["modify"] and total["delete"], total

    rows = {row.session_key: row for row in Session.objects.all()}
    for key, row in rows.items():
        data = row.get_decoded()
        blob = hashlib.sha256(f"{key}:{data['writer']}:{data['seq']}".encode()).hexdigest()
        assert data["key"] == key and data["blob"] == blob * (1 + data["seq"] % 40), key
    for report in reports:
        for key, seq in report["own_last"].items():
            if seq is None:
                assert key not in rows
            else:
                assert rows[key].get_decoded()["seq"] == seq
