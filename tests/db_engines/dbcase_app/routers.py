class SessionsToOther:
    """Sends every session model to the "other" database."""

    apps = {"sessions", "dbcase_app"}

    def db_for_read(self, model, **hints):
        return "other" if model._meta.app_label in self.apps else None

    db_for_write = db_for_read
