"""Models, stores and a router for the database engine cases (tests/db_engines/cases.py)."""
