"""A db engine for LinkedSession (rows of SessionNote cascade from it)."""

from csessions.backends import db


class SessionStore(db.SessionStore):
    @classmethod
    def get_model_class(cls):
        from dbcase_app.models import LinkedSession

        return LinkedSession
