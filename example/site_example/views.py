import random
import secrets

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from csessions.exceptions import SessionCookieTooLarge


CART_ITEMS = ["apple", "banana", "cherry", "durian", "elderberry", "fig", "grape", "<b>kiwi</b>"]
BIG_KEY = "big"
BIG_SIZE = 4096  # random bytes; base64 makes them ~5.5 kB, which compression cannot shrink


def _render_home(request, **extra):
    session = request.session
    context = {
        "engine": settings.SESSION_ENGINE,
        "visits": session.get("visits", 0),
        "items": sorted(session.items()),
        "expiry_date": session.get_expiry_date(),
        "expiry_age": session.get_expiry_age(),
        "cart": session.get("cart", []),
        **extra,
    }
    return render(request, "home.html", context)


def home(request):
    request.session["visits"] = request.session.get("visits", 0) + 1
    return _render_home(request)


@require_POST
def cart_add(request):
    # Assign a new list: mutating the stored one in place would not mark the session modified.
    request.session["cart"] = request.session.get("cart", []) + [random.choice(CART_ITEMS)]
    return redirect("home")


@require_POST
def reset(request):
    request.session.flush()
    return redirect("home")


def big(request):
    """Store a value too large for a cookie. SessionMiddleware saves only after the view has
    returned, where we could not catch the error, so save here and undo on failure."""
    request.session[BIG_KEY] = secrets.token_urlsafe(BIG_SIZE)
    try:
        request.session.save()
    except SessionCookieTooLarge as exc:
        del request.session[BIG_KEY]
        return _render_home(request, big_error=str(exc))
    note = f"Stored {len(request.session[BIG_KEY])} characters under {BIG_KEY!r} without an error."
    if "signed_cookies" in settings.SESSION_ENGINE:
        size = len(settings.SESSION_COOKIE_NAME) + len(request.session.session_key)
        note += (
            f" The cookie is now {size} bytes: browsers drop cookies over 4096 bytes without a"
            " word, and the whole session with it (visit the home page to see the counter restart)."
        )
    return _render_home(request, big_note=note)


def counter(request):
    """Benchmark endpoint: read and increment a session counter, reply in plain text."""
    n = request.session.get("counter", 0) + 1
    request.session["counter"] = n
    return HttpResponse(f"{n}\n", content_type="text/plain")


def nosession(request):
    """Benchmark ceiling: a reply as tiny, session untouched."""
    return HttpResponse("ok\n", content_type="text/plain")
