import logging

from django.conf import settings
from django.contrib.sessions.backends import signed_cookies

from csessions import signing
from csessions.conf import setting
from csessions.backends.base import CSessionMixin
from csessions.exceptions import SessionCookieTooLarge

SALT = "django.contrib.sessions.backends.signed_cookies"
# Browsers keep at most 4096 bytes of name + value per cookie and drop larger ones silently.
COOKIE_LIMIT = 4096

logger = logging.getLogger("csessions")


class SessionStore(CSessionMixin, signed_cookies.SessionStore):
    def load(self):
        try:
            return signing.loads(
                self.session_key,
                serializer=self.serializer,
                max_age=self.get_session_cookie_age(),  # custom expiry ignored, as Django (#19201)
                salt=SALT,
            )
        except Exception:
            self.create()  # Django's behaviour: a bad cookie is an empty session.
        return {}

    def _get_session_key(self):
        value = signing.dumps(self._session, compress=True, salt=SALT, serializer=self.serializer)
        name = setting("SESSION_COOKIE_NAME")
        size = len(name) + len(value)
        if size > COOKIE_LIMIT:
            error = SessionCookieTooLarge(name, size, COOKIE_LIMIT)
            if getattr(settings, "CSESSIONS_COOKIE_OVERSIZE", "raise") != "warn":
                raise error
            logger.warning("%s", error)
        return value
