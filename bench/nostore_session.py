"""A session engine that stores nothing: the floor under every engine in bench/site.py.

Django's session middleware and SessionBase run in full (the cookie is read, the session
"loaded", modified, "saved", the cookie set again) while the store costs nothing, so the gap
between this row and the no-session ceiling is what Django's session machinery costs whatever
the engine; the gap between this row and an engine is that engine's own cost. Not for use.
"""

from django.contrib.sessions.backends.base import SessionBase


class SessionStore(SessionBase):
    def load(self):
        return {}  # keeps the key: the same cookie goes back, as with a stored session

    def exists(self, session_key):
        return False

    def create(self):
        self._session_key = self._get_new_session_key()
        self.modified = True

    def save(self, must_create=False):
        if self.session_key is None:
            self.create()

    def delete(self, session_key=None):
        pass

    @classmethod
    def clear_expired(cls):
        pass
