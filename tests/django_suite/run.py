#!/usr/bin/env python
"""Run Django's own session test suite (tests/sessions_tests from the Django sdist) against the
csessions engines, with the interpreter of a venv that has exactly that Django installed:

    .venv/bin/python    tests/django_suite/run.py --django 5.2.19
    .venv312/bin/python tests/django_suite/run.py --django 6.1.3

csessions is imported from this checkout (its in-place build), Django from the venv.

Run 1: ``runtests.py csessions_tests sessions_tests``. csessions_tests (next to this file) holds
subclasses of Django's per-engine test classes with ``backend`` set to the csessions engine. The
run must be green, and every test of a csessions class must have the same outcome (ok, skip,
expected failure) as the same test of the Django class it subclasses, in the same run.

Run 2, for each csessions engine: Django's unchanged ``sessions_tests`` with SESSION_ENGINE set
to the csessions engine, and again with SESSION_ENGINE set to Django's twin engine. Every test
must have the same outcome in both, and a test that fails under both must end with the same
exception type (some do for the cookie, cache and file engines: SessionMiddlewareTests.
test_empty_session_saved reads the django_session table).

The sdist is downloaded once to .cache/django/; its tests/ directory is extracted to a fresh
temporary directory per run (the sdist's django/ package is not extracted, so it cannot shadow
the installed one). Raw runner output goes to .cache/django/logs/.

Exit status: 0 all good, 1 test failures or outcome mismatches, 2 setup problem.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(REPO, ".cache", "django")
LOGS = os.path.join(CACHE, "logs")
DEFAULT_PREFIX = "csessions.backends"
PY = "%d.%d" % sys.version_info[:2]


class SetupError(Exception):
    """Something needed for the run is missing; exit status 2."""


def log(msg=""):
    print(msg, flush=True)


# --------------------------------------------------------------------------- preparation


def check_django(version):
    try:
        import django
    except ImportError:
        raise SetupError(
            f"Django is not installed for {sys.executable}.\n"
            f"    {sys.executable} -m pip install django=={version}"
        ) from None
    if django.__version__ != version:
        raise SetupError(
            f"--django {version} but {sys.executable} has Django {django.__version__} "
            f"({os.path.dirname(django.__file__)}).\n"
            f"Use the venv that has Django {version}, or: {sys.executable} -m pip install django=={version}"
        )
    return os.path.dirname(os.path.realpath(django.__file__))


def find_sdist(version):
    hits = [
        p
        for p in glob.glob(os.path.join(CACHE, "*.tar.gz"))
        if os.path.basename(p).lower() == f"django-{version}.tar.gz"
    ]
    return hits[0] if hits else None


def download_sdist(version):
    os.makedirs(CACHE, exist_ok=True)
    log(f"downloading the Django {version} sdist to {CACHE} ...")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
           "--no-binary", ":all:", "--no-deps", f"django=={version}", "-d", CACHE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = find_sdist(version)
    if proc.returncode != 0 or not path:
        lines = [line if len(line) < 300 else line[:300] + " ..."
                 for line in (proc.stderr or proc.stdout).strip().splitlines()[-8:]]
        raise SetupError(
            f"could not download the Django {version} sdist:\n    {' '.join(cmd)}\n" + "\n".join(lines)
        )
    return path


def extract_tests(sdist, dest):
    """Extracts only <top>/tests/ of the sdist into dest; returns the path of that tests/ dir."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = tar.getmembers()
        if not members:
            raise tarfile.ReadError("empty archive")
        top = members[0].name.split("/")[0]
        wanted = [m for m in members if m.name.startswith(f"{top}/tests/")]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=wanted, filter="data")
        else:  # Python < 3.10.12 / 3.11.4
            tar.extractall(dest, members=wanted)
    tests = os.path.join(dest, top, "tests")
    for needed in ("runtests.py", "test_sqlite.py", "sessions_tests/tests.py", "cache/failing_cache.py"):
        if not os.path.isfile(os.path.join(tests, needed)):
            raise SetupError(f"{sdist} has no tests/{needed}; is it really Django's sdist?")
    return tests


def prepare_tree(version, workdir):
    sdist = find_sdist(version) or download_sdist(version)
    try:
        return extract_tests(sdist, workdir)
    except (tarfile.TarError, EOFError, OSError) as exc:  # a truncated or corrupt cached download
        log(f"cached {sdist} is unreadable ({exc}); downloading it again")
        os.remove(sdist)
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        return extract_tests(download_sdist(version), workdir)


def install_suite(tests_dir, suite, engines):
    """Copies csessions_tests into Django's tests/ and writes the run-2 settings modules."""
    dst = os.path.join(tests_dir, "csessions_tests")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(os.path.join(HERE, "csessions_tests"), dst,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    settings = {}  # SESSION_ENGINE -> settings module name
    for engine in engines:
        twin = suite.ENGINES[engine][0]
        for name, value in (
            (f"csessions_settings_{engine}", suite.module_name(engine)),
            ("django_settings_" + twin.rsplit(".", 1)[-1], twin),
        ):
            with open(os.path.join(tests_dir, name + ".py"), "w") as f:
                f.write(f"from test_sqlite import *  # noqa: F401,F403\n\nSESSION_ENGINE = {value!r}\n")
            settings[value] = name
    return settings


# --------------------------------------------------------------------------- running and parsing

# "test_x (pkg.module.Class.test_x)" (3.11+) or "test_x (pkg.module.Class)" (3.10); the rest of
# the line may hold " ... <status>". A test with a docstring puts its first line, then
# " ... <status>", on the next line.
HEAD = re.compile(r"^([\w.]+) \(((?:\w+\.)+\w+)\)(.*)$")
STATUS = re.compile(r"(ok|FAIL|ERROR|skipped(?: .*)?|expected failure|unexpected success)")
SHORT = {"ok": "ok", "FAIL": "fail", "ERROR": "error", "expected failure": "xfail",
         "unexpected success": "xpass"}
SEP1, SEP2 = "=" * 70, "-" * 70


def parse_outcomes(text):
    """({test id "pkg.module.Class.method": outcome}, id of a test left without outcome or None);
    outcome is one of ok/skip/xfail/fail/error/xpass."""
    outcomes, pending = {}, None
    for line in text.splitlines():
        if line in (SEP1, SEP2) or line.startswith("Ran "):
            pending = None
        m = HEAD.match(line)
        if m:
            name, dotted, line = m.groups()
            if dotted.endswith("." + name):
                dotted = dotted[: -len(name) - 1]
            pending = f"{dotted}.{name}"
            if not line:
                continue  # docstring (or interleaved output) first
        if pending is None:
            continue
        i = line.find(" ... ")
        status = STATUS.fullmatch(line[i + 5:] if i >= 0 else line)
        if status:
            word = status.group(1)
            outcomes[pending] = "skip" if word.startswith("skipped") else SHORT[word]
            pending = None
    return outcomes, pending


def parse_tracebacks(text):
    """{test id: the runner's FAIL/ERROR block} from the report after the test list."""
    blocks, out = text.split("\n" + SEP1 + "\n")[1:], {}
    for block in blocks:
        block = block.split("\n" + SEP2 + "\nRan ")[0]
        m = re.match(r"^[A-Z ]+: ([\w.]+) \(((?:\w+\.)+\w+)\)", block)
        if m:
            name, dotted = m.groups()
            if dotted.endswith("." + name):
                dotted = dotted[: -len(name) - 1]
            out[f"{dotted}.{name}"] = block.rstrip()
    return out


class Run:
    def __init__(self, label, args, tests_dir, env, django_path, timeout):
        self.label = label
        cmd = [sys.executable, "runtests.py", *args, "--parallel", "1", "-v", "2", "--noinput"]
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=tests_dir, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SetupError(f"{label}: runtests.py took over {timeout}s: {' '.join(cmd)}") from None
        self.seconds = time.monotonic() - started
        self.returncode = proc.returncode
        self.text = proc.stdout + "\n" + proc.stderr
        os.makedirs(LOGS, exist_ok=True)
        self.log_path = os.path.join(LOGS, f"{label}.log")
        with open(self.log_path, "w") as f:
            f.write(f"$ cd {tests_dir} && {' '.join(cmd)}\n# exit status {proc.returncode}\n\n")
            f.write(f"# stdout\n{proc.stdout}\n# stderr\n{proc.stderr}")
        self.outcomes, unfinished = parse_outcomes(proc.stderr)
        self.tracebacks = parse_tracebacks(proc.stderr)

        found = re.search(r"^Found (\d+) test", self.text, re.M)
        where = re.search(r"^Testing against Django installed in '(.*?)'", self.text, re.M)
        tail = "\n".join(self.text.strip().splitlines()[-25:])
        if not found:
            raise SetupError(f"{label}: runtests.py did not get to run tests (log: {self.log_path}):\n{tail}")
        if where and os.path.realpath(where.group(1)) != django_path:
            raise SetupError(f"{label}: runtests.py used Django from {where.group(1)}, not {django_path}")
        if not self.outcomes:
            raise SetupError(f"{label}: no test outcome in runtests.py's output (log: {self.log_path}):\n{tail}")
        # Found N counts tests; an error in setUpClass or a module that fails to import shows as
        # one extra ERROR line instead of the tests it stopped. Either way the run is not clean.
        self.problems, self.crash = [], None
        if proc.returncode < 0:
            during = f" during {unfinished}" if unfinished else ""
            self.problems.append(f"{label}: runtests.py was killed by signal {-proc.returncode}{during} "
                                 f"(log: {self.log_path})")
            self.crash = (f"  {label}: runtests.py was killed by signal {-proc.returncode}{during}; "
                          "the end of its output:\n    | "
                          + "\n    | ".join(proc.stderr.rstrip().splitlines()[-30:]))
        if int(found.group(1)) != len(self.outcomes):
            self.problems.append(
                f"{label}: runtests.py found {found.group(1)} tests but reported "
                f"{len(self.outcomes)} outcomes (log: {self.log_path})"
            )

    def exception(self, test_id):
        """The exception type a failed test ended with, from the last line of its report."""
        block = self.tracebacks.get(test_id, "")
        last = block.rstrip().splitlines()[-1] if block.strip() else ""
        return last.split(":", 1)[0] if re.match(r"^[\w.]+(:|$)", last) else "?"

    def of_class(self, cls_path):
        prefix = cls_path + "."
        return {t[len(prefix):]: o for t, o in self.outcomes.items() if t.startswith(prefix)}


def counts(outcomes):
    kinds = ("ok", "skip", "xfail", "fail", "error", "xpass")
    return [sum(1 for o in outcomes.values() if o == k) for k in kinds]


def capped(items, limit):
    return items if len(items) <= limit else items[:limit] + [f"... and {len(items) - limit} more"]


def show_tracebacks(run, test_ids, limit=60):
    for test_id in test_ids:
        block = run.tracebacks.get(test_id)
        if block:
            lines = block.splitlines()
            if len(lines) > limit:
                lines = lines[:limit] + [f"... ({len(lines) - limit} more lines in {run.log_path})"]
            log("    | " + "\n    | ".join(lines) + "\n")


# --------------------------------------------------------------------------- the two checks


def check_subclasses(run, suite, engines):
    """Run 1: csessions_tests.tests.<Class> vs sessions_tests.tests.<DjangoClass>."""
    problems = list(run.problems)
    log(f"\nRun 1: csessions_tests subclasses vs Django's classes, same run "
        f"({len(run.outcomes)} tests, {run.seconds:.1f}s, exit status {run.returncode})")
    head = f"  {'engine':<15}{'class':<34}{'ok':>4}{'skip':>5}{'xfail':>6}{'fail':>5}{'err':>4}  vs Django class"
    log(head)
    log("  " + "-" * (len(head) - 2))
    expected_classes = set()
    for engine in engines:
        for cs_name, dj_name in suite.ENGINES[engine][1]:
            expected_classes.add(cs_name)
            mine = run.of_class(f"csessions_tests.tests.{cs_name}")
            theirs = run.of_class(f"sessions_tests.tests.{dj_name}")
            ok, skip, xfail, fail, error, xpass = counts(mine)
            bad = []
            if not mine:
                bad.append("no tests ran")
            if not theirs:
                bad.append(f"Django's {dj_name} did not run")
            subclass = cs_name == dj_name  # otherwise a mixin-based class checked on shared tests
            compared = set(mine) | (set(theirs) if subclass else set()) if mine and theirs else ()
            for method in sorted(compared):
                a, b = mine.get(method, "missing"), theirs.get(method)
                if b is None and not subclass:
                    b = "ok"  # a test Django's class does not have must simply pass
                if a != b:
                    bad.append(f"{method}: {a} (Django: {b or 'missing'})")
            verdict = "same outcomes" if subclass else "same outcomes on shared tests"
            log(f"  {engine:<15}{cs_name:<34}{ok:>4}{skip:>5}{xfail:>6}{fail:>5}{error + xpass:>4}  "
                + (f"{verdict} ({dj_name})" if not bad else f"MISMATCH vs {dj_name}"))
            for item in capped(bad, 15):
                log(f"      {item}")
            if bad:
                problems.append(f"run 1 [{engine}] {cs_name}: " + (
                    bad[0] if len(bad) == 1 else f"{len(bad)} mismatches vs {dj_name}, first: {bad[0]}"))
    stray = {t.rsplit(".", 1)[0] for t in run.outcomes if t.startswith("csessions_tests.")}
    stray -= {f"csessions_tests.tests.{c}" for c in expected_classes}
    for cls in sorted(stray):
        problems.append(f"unexpected test class {cls}")
        log(f"  unexpected test class {cls}: {counts(run.of_class(cls))}")
    dj_only = {t: o for t, o in run.outcomes.items() if t.startswith("sessions_tests.")}
    ok, skip, xfail, fail, error, xpass = counts(dj_only)
    log(f"  {'(Django, all)':<15}{'sessions_tests.tests.*':<34}{ok:>4}{skip:>5}{xfail:>6}{fail:>5}{error + xpass:>4}")

    if run.crash:
        log("\n" + run.crash)
    failed = sorted(t for t, o in run.outcomes.items() if o in ("fail", "error", "xpass"))
    if failed:
        log(f"\n  {len(failed)} test(s) failed in run 1:")
        for test_id in failed:
            log(f"    {run.outcomes[test_id].upper()}: {test_id}")
        show_tracebacks(run, failed[:10])
    if run.returncode != 0:
        problems.append(f"run 1 exited with status {run.returncode} (log: {run.log_path})")
    # Failures of csessions classes are listed above as mismatches already.
    problems += [f"run 1: {t} {run.outcomes[t]}" for t in failed if not t.startswith("csessions_tests.")]
    return problems


def check_settings_runs(mine_runs, twin_runs, suite, engines):
    """Run 2: unchanged sessions_tests, SESSION_ENGINE = csessions engine vs Django's twin."""
    problems = []
    log("\nRun 2: Django's unchanged sessions_tests, SESSION_ENGINE = csessions engine vs Django's twin")
    head = (f"  {'engine':<15}{'Django twin':<45}{'tests':>6}{'ok':>5}{'skip':>5}{'xfail':>6}"
            f"{'fail':>5}{'err':>4}  result")
    log(head)
    log("  " + "-" * (len(head) - 2))
    for engine in engines:
        twin = suite.ENGINES[engine][0]
        mine, theirs = mine_runs[engine], twin_runs[twin]
        problems += mine.problems + [p for p in theirs.problems if p not in problems]
        ok, skip, xfail, fail, error, xpass = counts(mine.outcomes)
        diff = sorted(
            t for t in set(mine.outcomes) | set(theirs.outcomes)
            if mine.outcomes.get(t) != theirs.outcomes.get(t)
        )
        both = []  # failing under both engines, the same way
        for test_id, outcome in sorted(mine.outcomes.items()):
            if outcome in ("fail", "error", "xpass") and theirs.outcomes.get(test_id) == outcome:
                if mine.exception(test_id) == theirs.exception(test_id):
                    both.append(test_id)
                else:  # same outcome, different exception: not the same behaviour
                    diff.append(test_id)
        log(f"  {engine:<15}{twin:<45}{len(mine.outcomes):>6}{ok:>5}{skip:>5}{xfail:>6}{fail:>5}"
            f"{error + xpass:>4}  " + ("identical" if not diff else f"{len(diff)} MISMATCH(ES)"))
        for test_id in both:
            log(f"      {mine.outcomes[test_id]} under both engines: {test_id} ({mine.exception(test_id)})")
        lines = []
        for test_id in diff:
            a, b = mine.outcomes.get(test_id, "missing"), theirs.outcomes.get(test_id, "missing")
            if a == b:
                a, b = f"{a} ({mine.exception(test_id)})", f"{b} ({theirs.exception(test_id)})"
            lines.append(f"{test_id}: {a} with {suite.module_name(engine)}, {b} with {twin}")
        for line in capped(lines, 15):
            log(f"      MISMATCH {line}")
        if diff:
            problems.append(f"run 2 [{engine}] " + (
                lines[0] if len(diff) == 1 else f"{len(diff)} mismatches, first: {lines[0]}"))
        show_tracebacks(mine, diff[:3])
        for crashed in {mine.crash, theirs.crash} - {None}:
            log(crashed)
        if diff:
            log(f"      logs: {mine.log_path}\n            {theirs.log_path}")
    return problems


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--django", required=True, metavar="X.Y.Z",
                        help="the Django version installed for this interpreter")
    parser.add_argument("--engine-prefix", default=DEFAULT_PREFIX,
                        help="self-test of this harness only: e.g. django.contrib.sessions.backends "
                             "runs it against Django's own engines (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the extracted tree, print its path")
    parser.add_argument("--jobs", type=int, default=4,
                        help="runtests.py processes at a time (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per runtests.py run")
    args = parser.parse_args(argv)
    started = time.monotonic()

    os.environ["CSESSIONS_SUITE_ENGINE_PREFIX"] = args.engine_prefix
    sys.dont_write_bytecode = True  # no __pycache__ in the checkout from this process
    sys.path.insert(0, HERE)
    sys.path.insert(0, REPO)
    import csessions_tests as suite

    django_path = check_django(args.django)
    engines = suite.present_engines()
    testing_csessions = args.engine_prefix == DEFAULT_PREFIX
    if not engines:
        raise SetupError(f"no engine found under {args.engine_prefix} (looked for: {', '.join(suite.ENGINES)})")
    if testing_csessions:
        import importlib.util

        spec = importlib.util.find_spec("csessions")
        if os.path.realpath(os.path.dirname(spec.origin)) != os.path.realpath(os.path.join(REPO, "csessions")):
            raise SetupError(f"csessions resolves to {spec.origin}, not to the checkout {REPO}")
        if importlib.util.find_spec("csessions._core") is None:
            tag = "py%d%d" % sys.version_info[:2]
            raise SetupError(
                f"csessions._core is not built for Python {PY}. Build it in place:\n"
                f"    cd {REPO} && flock /tmp/csessions-build.lock {sys.executable} setup.py -q "
                f"build_ext --inplace --build-temp build/{tag}"
            )

    log(f"Django {args.django} ({django_path}), Python {sys.version.split()[0]} ({sys.executable})")
    log(f"engines covered: {', '.join(suite.module_name(e) for e in engines)}")
    missing = [e for e in suite.ENGINES if e not in engines]
    if missing:
        log(f"engines not present (not tested): {', '.join(suite.module_name(e) for e in missing)}")

    workdir = tempfile.mkdtemp(prefix=f"csessions-django-{args.django}-")
    try:
        tests_dir = prepare_tree(args.django, workdir)
        settings = install_suite(tests_dir, suite, engines)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("DJANGO_SETTINGS_MODULE", None)
        if testing_csessions:
            env["CSESSIONS_SUITE_EXPECT_ROOT"] = REPO
        log(f"tests from the sdist: {tests_dir}")

        def run(label, *rt_args):
            label = f"django-{args.django}-py{PY}-{label}"
            return Run(label, rt_args, tests_dir, env, django_path, args.timeout)

        # The runtests.py processes share nothing (in-memory SQLite, locmem cache, own TMPDIR).
        twins = sorted({suite.ENGINES[e][0] for e in engines})
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            run1_job = pool.submit(run, "subclasses", "csessions_tests", "sessions_tests")
            mine_jobs = {
                engine: pool.submit(run, f"engine-{engine}", "sessions_tests",
                                    f"--settings={settings[suite.module_name(engine)]}")
                for engine in engines
            }
            twin_jobs = {
                twin: pool.submit(run, f"twin-{twin.rsplit('.', 1)[-1]}", "sessions_tests",
                                  f"--settings={settings[twin]}")
                for twin in twins
            }
            mine_runs = {engine: job.result() for engine, job in mine_jobs.items()}
            twin_runs = {twin: job.result() for twin, job in twin_jobs.items()}
            run1 = run1_job.result()
        problems = check_subclasses(run1, suite, engines)
        problems += check_settings_runs(mine_runs, twin_runs, suite, engines)
    finally:
        if args.keep:
            log(f"\nkept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - started
    log(f"\nlogs: {LOGS}")
    if problems:
        log(f"\nFAILED (Django {args.django}, Python {PY}, {elapsed:.1f}s): {len(problems)} problem(s)")
        for p in capped(problems, 30):
            log(f"  - {p}")
        return 1
    log(f"\nOK: Django {args.django}, Python {PY}, engines {', '.join(engines)} ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as exc:
        print(f"\nrun.py: {exc}", file=sys.stderr)
        sys.exit(2)
