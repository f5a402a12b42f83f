"""Database sessions: Django's ``db`` engine with the codec and keys in C, and a
``clear_expired()`` that stays short and flat on tables with millions of expired rows.

    SESSION_ENGINE = "csessions.backends.db"

Same model (``django.contrib.sessions.models.Session``, or whatever ``get_model_class()``
returns), same table, same rows: a row written by Django's ``db`` or ``cached_db`` engine loads
here and the other way round, and ``Session.get_decoded()`` and the admin keep working. Every
method but the two below is Django's own.

``clear_expired()`` / ``aclear_expired()`` (so ``manage.py clearsessions``) differ from Django's:

* Expired rows go in batches of at most ``CSESSIONS_CLEAR_BATCH`` rows, oldest first, each
  batch one DELETE statement in its own short transaction, until a batch deletes fewer rows
  than that. Django deletes them all in one transaction. On SQLite::

      DELETE FROM <table> WHERE <expire_date> < %s AND <session_key> IN
        (SELECT <session_key> FROM <table> WHERE <expire_date> < %s ORDER BY <expire_date> LIMIT %s)

  On PostgreSQL the candidates are fetched by address instead (``ctid = ANY(ARRAY(SELECT ctid
  ...))``): its planner turns the IN form into a scan of the whole table per batch. A session
  that a request saves (with a new expiry) while the batch waits for its row lock is rechecked
  once the lock is free (its new version has a new ctid and a future expiry) and kept.
* Rows are never loaded into Python and no ``pre_delete``/``post_delete`` signals are sent for
  expired sessions. Django's ``QuerySet.delete()`` fetches every expired row as a model
  instance, and sends both signals for each, as soon as any receiver of either signal is
  connected for the session model (or for all senders, as some audit and cache apps do).
  Exception: when rows of other models must go with the sessions (a ForeignKey to the session
  model with ``on_delete`` other than ``DO_NOTHING``, a generic relation, a multi-table
  inheritance parent), each batch is deleted by Django's ``Collector`` (cascades and signals
  exactly as in Django), with one batch of rows in memory at a time.
* The database is ``router.db_for_write(model)`` and the table ``model._meta.db_table``, as
  Django's ``QuerySet.delete()`` would use.
* It returns the number of sessions deleted (Django's returns None).

Settings:

``CSESSIONS_CLEAR_BATCH`` (default 10000): rows per batch, a positive int. Smaller batches hold
locks for less time and cost more round trips.

Databases: SQLite and PostgreSQL are tested (the latter on a real server, with 1,000,000 expired
rows in bench/db_clear_expired.py). MySQL/MariaDB reject LIMIT inside ``IN (...)``; there each
batch is ``DELETE FROM <table> WHERE <expire_date> < %s ORDER BY <expire_date> LIMIT %s``, and on
Oracle the subquery ends with ``FETCH FIRST %s ROWS ONLY``; those two are not tested here. Other
backends get the SQLite statement.
"""

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends import db
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.models.deletion import Collector
from django.utils import timezone

from csessions.backends.base import CSessionMixin

DEFAULT_CLEAR_BATCH = 10_000


def clear_batch_size():
    """CSESSIONS_CLEAR_BATCH, checked (read at each call, so setting changes apply at once)."""
    value = getattr(settings, "CSESSIONS_CLEAR_BATCH", DEFAULT_CLEAR_BATCH)
    if type(value) is not int or value < 1:  # bool is an int subclass, and not a batch size
        raise ImproperlyConfigured(f"CSESSIONS_CLEAR_BATCH must be a positive int, not {value!r}.")
    return value


class _CollectorIgnoringSignals(Collector):
    # Django's own rule for "these rows can go in one DELETE, nothing else has to happen" (no
    # cascades, no parents, no generic relations), minus the signal check. Should a Django
    # release drop this private hook, the signal check comes back and batches go through the
    # Collector: slower, never wrong.
    def _has_signal_listeners(self, model):
        return False


def _needs_collector(model, using):
    return not _CollectorIgnoringSignals(using).can_fast_delete(model._base_manager.using(using).all())


def _delete_sql(model, connection):
    """(SQL, number of expiry parameters) of one batch; the last parameter is the batch size.

    The subquery picks at most a batch of candidates, oldest first (an index range scan that
    stops at the batch size); the outer condition is what decides: only a row that is still
    expired when its lock is taken is deleted, whatever the candidate list holds.
    """
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    pk = qn(model._meta.pk.column)
    expire = qn(model._meta.get_field("expire_date").column)
    if connection.vendor == "mysql":  # no LIMIT inside IN (...); single-table DELETE has one
        return f"DELETE FROM {table} WHERE {expire} < %s ORDER BY {expire} LIMIT %s", 1
    if connection.vendor == "postgresql":
        # An IN (subquery) here becomes a hash semi join over a sequential scan of the whole
        # table, per batch. ctid = ANY(ARRAY(subquery)) runs the subquery once and fetches
        # the candidates by their physical address (a TID scan).
        return (
            f"DELETE FROM {table} WHERE {expire} < %s AND ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {expire} < %s ORDER BY {expire} LIMIT %s))",
            2,
        )
    limit = "FETCH FIRST %s ROWS ONLY" if connection.vendor == "oracle" else "LIMIT %s"
    return (
        f"DELETE FROM {table} WHERE {expire} < %s AND {pk} IN "
        f"(SELECT {pk} FROM {table} WHERE {expire} < %s ORDER BY {expire} {limit})",
        2,
    )


class SessionStore(CSessionMixin, db.SessionStore):
    @classmethod
    def clear_expired(cls):
        model = cls.get_model_class()
        using = router.db_for_write(model)
        batch = clear_batch_size()
        now = timezone.now()
        collect = _needs_collector(model, using)
        total = 0
        while True:
            seen, deleted = cls._delete_expired_batch(model, using, now, batch, collect)
            total += deleted
            if seen < batch:
                return total

    @classmethod
    async def aclear_expired(cls):
        # Transactions are not async in Django (its db engine's asave() does the same).
        return await sync_to_async(cls.clear_expired)()

    @classmethod
    def _delete_expired_batch(cls, model, using, now, batch, collect):
        """One batch in one transaction: (rows looked at, sessions deleted)."""
        if collect:
            manager = model._base_manager.using(using)
            expired = manager.filter(expire_date__lt=now)
            pks = list(expired.order_by("expire_date").values_list("pk", flat=True)[:batch])
            if not pks:
                return 0, 0
            with transaction.atomic(using=using):
                _, per_model = expired.filter(pk__in=pks).delete()
            return len(pks), per_model.get(model._meta.label, 0)
        connection = connections[using]
        sql, n_expire = _delete_sql(model, connection)
        expire = model._meta.get_field("expire_date").get_db_prep_value(now, connection)
        with transaction.atomic(using=using):
            with connection.cursor() as cursor:
                cursor.execute(sql, [expire] * n_expire + [batch])
                deleted = cursor.rowcount
        return deleted, deleted
