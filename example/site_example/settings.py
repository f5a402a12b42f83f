"""Settings for the csessions demo site. Environment variables:

CSESSIONS_ENGINE   session engine (default "csessions.backends.signed_cookies")
DJANGO_DEBUG       "0"/"false" turns DEBUG off (default on; benchmarks should turn it off)
DJANGO_SECRET_KEY  signing key (default: a public demo key, never use it for anything real)
SITE_DATABASE      JSON of DATABASES["default"] (default: SQLite in example/db.sqlite3)
SITE_CACHE         JSON of CACHES["default"] (default: Django's LocMem)
(bench/site.py uses the last two to run every engine on a real PostgreSQL, Redis, memcached.)
"""

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent  # example/

# DEMO ONLY: this default key is public. Set DJANGO_SECRET_KEY for anything else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "csessions-demo-INSECURE-public-key-do-not-deploy")

DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() not in ("0", "false", "no", "off", "")

ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

SESSION_ENGINE = os.environ.get("CSESSIONS_ENGINE", "csessions.backends.signed_cookies")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]

# Kept minimal so /counter vs /nosession measures the session engine, not other middleware.
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "site_example.urls"
WSGI_APPLICATION = "site_example.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "site_example" / "templates"],
        "APP_DIRS": False,
    }
]

# The cookie engine needs no database; this is here for database-backed engines.
DATABASES = {
    "default": json.loads(os.environ["SITE_DATABASE"]) if os.environ.get("SITE_DATABASE") else {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

if os.environ.get("SITE_CACHE"):
    CACHES = {"default": json.loads(os.environ["SITE_CACHE"])}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
