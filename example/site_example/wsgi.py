"""WSGI entry point: ``gunicorn --chdir example site_example.wsgi``."""

import os
import sys
from pathlib import Path

# Import csessions from this checkout (in-place build), no install needed.
REPO_ROOT = str(Path(__file__).resolve().parent.parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_example.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
