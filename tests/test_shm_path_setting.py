"""The shm engine with CSESSIONS_SHM_PATH: the store in a file (its C side is
tests/test_shm_file.py); here the setting, the engine and the management command."""

import io
import json
import os
import stat

import pytest
from django.core.management import call_command
from django.test import override_settings

from csessions.backends import shm
from csessions.management.commands.csessions_shm import Command

MIB = 1024 * 1024


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "sessions.shm"
    with override_settings(CSESSIONS_SHM_NAME=f"unused-{os.getpid()}", CSESSIONS_SHM_PATH=path,
                           CSESSIONS_SHM_SIZE=2 * MIB):
        yield shm, path
        for key in [k for k in shm._stores if k[3] == str(path)]:
            shm._stores.pop(key).close()


def test_sessions_live_in_the_file_and_survive_reopening(engine):
    engine, path = engine
    s = engine.SessionStore()
    s["cart"] = [1, 2]
    s.save()
    assert engine.store().path == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not os.path.exists(f"/dev/shm/unused-{os.getpid()}")
    for key in list(engine._stores):  # every worker restarts
        engine._stores.pop(key).close()
    engine._forget()
    assert engine.SessionStore(s.session_key)["cart"] == [1, 2]


def test_management_command_names_the_file(engine):
    engine, path = engine
    s = engine.SessionStore()
    s["a"] = 1
    s.save()
    out = io.StringIO()
    call_command(Command(), "stats", stdout=out)
    assert f"file {path}" in out.getvalue()
    out = io.StringIO()
    call_command(Command(), "stats", "--json", stdout=out)
    stats = json.loads(out.getvalue())
    assert stats["path"] == str(path) and stats["entries"] == 1 and stats["reboots"] == 0
    out = io.StringIO()
    call_command(Command(), "recreate", stdout=out)
    assert str(path) in out.getvalue()
    assert engine.stats()["entries"] == 0 and engine.SessionStore(s.session_key).load() == {}


def test_test_runner_gets_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "_in_test_runner", lambda: True)
    path = tmp_path / "prod.shm"
    with override_settings(CSESSIONS_SHM_PATH=path, CSESSIONS_SHM_SIZE=MIB):
        name, _, _, got = shm.config()
        assert got == f"{path}-test-{os.getpid()}"
        assert (name, got) in shm._test_segments
        shm.store()
        assert os.path.exists(got) and not path.exists()
        shm._unlink_test_segments()
        assert not os.path.exists(got)
        for key in [k for k in shm._stores if k[3] == got]:
            shm._stores.pop(key).close()
    shm._test_segments.discard((name, got))
