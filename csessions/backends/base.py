"""What every csessions engine shares: Django's SessionBase with its codec and keys in C.

Engines list ``CSessionMixin`` before Django's own ``SessionStore`` of the same engine, so
everything not named here stays Django's code, exact across Django versions.
"""

import logging

from csessions import _core, signing


class CSessionMixin:
    def encode(self, session_dict):
        return signing.dumps(session_dict, salt=self.key_salt, serializer=self.serializer, compress=True)

    def decode(self, session_data):
        try:
            return signing.loads(session_data, salt=self.key_salt, serializer=self.serializer)
        except signing.BadSignature:
            logging.getLogger("django.security.SuspiciousSession").warning("Session data corrupted")
        except Exception:
            pass  # Django's behaviour: anything else undecodable is an empty session.
        return {}

    def _get_new_session_key(self):
        while True:
            session_key = _core.new_session_key()
            if not self.exists(session_key):
                return session_key

    async def _aget_new_session_key(self):
        while True:
            session_key = _core.new_session_key()
            if not await self.aexists(session_key):
                return session_key
