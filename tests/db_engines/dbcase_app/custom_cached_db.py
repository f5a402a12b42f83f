"""A cached_db engine for CustomSession (see custom_db)."""

from csessions.backends import cached_db


class SessionStore(cached_db.SessionStore):
    @classmethod
    def get_model_class(cls):
        from dbcase_app.models import CustomSession

        return CustomSession
