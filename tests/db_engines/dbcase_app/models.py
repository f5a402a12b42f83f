from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models


class CustomSession(AbstractBaseSession):
    """A custom session model in its own table, as Django documents (get_model_class())."""

    account_id = models.IntegerField(null=True, db_index=True)

    class Meta:
        db_table = "csessions_custom_session"

    @classmethod
    def get_session_store_class(cls):
        from dbcase_app.custom_db import SessionStore

        return SessionStore


class LinkedSession(AbstractBaseSession):
    """A session model other rows point at with on_delete=CASCADE: expired sessions cannot go
    in one plain DELETE (their notes must go too)."""

    class Meta:
        db_table = "csessions_linked_session"

    @classmethod
    def get_session_store_class(cls):
        from dbcase_app.linked_db import SessionStore

        return SessionStore


class SessionNote(models.Model):
    session = models.ForeignKey(LinkedSession, on_delete=models.CASCADE)
    text = models.CharField(max_length=20)
