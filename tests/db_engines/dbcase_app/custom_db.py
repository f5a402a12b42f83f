"""A db engine for CustomSession, as Django documents custom session models. Named
SessionStore like every engine, so its key_salt (and so its rows) matches the other engines'."""

from csessions.backends import db


class SessionStore(db.SessionStore):
    @classmethod
    def get_model_class(cls):
        from dbcase_app.models import CustomSession

        return CustomSession

    def create_model_instance(self, data):
        obj = super().create_model_instance(data)
        obj.account_id = data.get("account_id")
        return obj
