#!/usr/bin/env python
"""Django's command-line utility for the csessions demo site."""

import os
import sys
from pathlib import Path

# Import csessions from this checkout (in-place build), no install needed.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_example.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
