# The README's two commands: `make test` and `make demo`. Both set up everything from a clean
# clone on Debian 12 (as root): system packages, virtualenvs, the C extension.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
PY311 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.11.*/bin/python3.11) $(shell command -v python3.11))
PY312 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12.*/bin/python3.12) $(shell command -v python3.12))
PY310 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.10.*/bin/python3.10) $(shell command -v python3.10))
PY313 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.13.*/bin/python3.13) $(shell command -v python3.13))

DJANGO_52 := 5.2.19
DJANGO_61 := 6.1.3
DJANGO_60 := 6.0.10
DEB_PACKAGES := build-essential pkg-config python3-dev python3-venv libsodium-dev libsimdjson-dev zlib1g-dev libssl-dev valgrind strace \
	postgresql redis-server memcached

VENV := .venv
VENV312 := .venv312
VENV_ASAN := .venv-asan
VENV310 := .venv310
VENV313 := .venv313
BUILD_LOCK := flock /tmp/csessions-build.lock

.PHONY: test demo build deps bench bench-check clean test-py test-django test-asan test-compat

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# venv name, interpreter, Django version
define make_venv
	@test -x $(1)/bin/python || { test -n "$(2)" || { echo "make: no Python interpreter for $(1):" \
	  "install it with pyenv or put it on the PATH (README, Development)" >&2; exit 1; }; $(2) -m venv $(1); }
	@$(1)/bin/python -m pip install -q --disable-pip-version-check "setuptools>=77" wheel "django==$(3)" \
	  "pytest>=8" "hypothesis>=6.100" "psycopg[binary]>=3.1" "redis>=5" "django-redis>=5.4" "pymemcache>=4" 2>&1 | grep -v "^WARNING: Location" || true
endef

$(VENV)/.ok: pyproject.toml Makefile
	$(call make_venv,$(VENV),$(PY311),$(DJANGO_52))
	@touch $@

$(VENV312)/.ok: pyproject.toml Makefile
	$(call make_venv,$(VENV312),$(PY312),$(DJANGO_61))
	@touch $@

$(VENV310)/.ok: pyproject.toml Makefile
	$(call make_venv,$(VENV310),$(PY310),$(DJANGO_52))
	@touch $@

$(VENV313)/.ok: pyproject.toml Makefile
	$(call make_venv,$(VENV313),$(PY313),$(DJANGO_60))
	@touch $@

$(VENV_ASAN)/.ok: pyproject.toml Makefile
	$(call make_venv,$(VENV_ASAN),$(PY311),$(DJANGO_52))
	@touch $@

# In-place builds: tests import csessions from the checkout. Warnings are errors here.
build: deps $(VENV)/.ok
	$(BUILD_LOCK) env CSESSIONS_WERROR=1 $(VENV)/bin/python setup.py -q build_ext --inplace --build-temp build/py311

test-py: build
	$(VENV)/bin/python -m pytest -q tests
	$(VENV)/bin/python -m pytest -q example/test_example.py

test-django: build $(VENV312)/.ok
	$(VENV)/bin/python tests/django_suite/run.py --django $(DJANGO_52)
	$(BUILD_LOCK) env CSESSIONS_WERROR=1 $(VENV312)/bin/python setup.py -q build_ext --inplace --build-temp build/py312
	$(VENV312)/bin/python -m pytest -q tests
	$(VENV312)/bin/python tests/django_suite/run.py --django $(DJANGO_61)

# The rest of the supported matrix: Python 3.10 with Django 5.2, Python 3.13 with Django 6.0.
test-compat: deps $(VENV310)/.ok $(VENV313)/.ok
	$(BUILD_LOCK) env CSESSIONS_WERROR=1 $(VENV310)/bin/python setup.py -q build_ext --inplace --build-temp build/py310
	$(VENV310)/bin/python -m pytest -q tests
	$(BUILD_LOCK) env CSESSIONS_WERROR=1 $(VENV313)/bin/python setup.py -q build_ext --inplace --build-temp build/py313
	$(VENV313)/bin/python -m pytest -q tests

# The whole test suite again against an ASan + UBSan build; any report aborts the run.
test-asan: deps $(VENV_ASAN)/.ok
	$(BUILD_LOCK) bash -c 'rm -rf build/asan-lib && mkdir -p build/asan-lib && cp -r csessions build/asan-lib/ \
	  && rm -f build/asan-lib/csessions/_core*.so \
	  && CSESSIONS_WERROR=1 CSESSIONS_SANITIZE=1 $(VENV_ASAN)/bin/python setup.py -q build_ext --build-temp build/asan --build-lib build/asan-lib'
	cd build && PYTHONPATH=$(CURDIR)/build/asan-lib CSESSIONS_EXPECT_PATH=$(CURDIR)/build/asan-lib LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libstdc++.so) \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  CSESSIONS_SANITIZED=1 ../$(VENV_ASAN)/bin/python -m pytest -q -p no:cacheprovider -c ../pyproject.toml --rootdir .. ../tests

test: test-py test-django test-compat test-asan bench-check
	@echo "make test: all green"

# The example site on http://127.0.0.1:8000, on the shared-memory engine (CSESSIONS_ENGINE
# picks another).
demo: build
	cd example && CSESSIONS_ENGINE=$${CSESSIONS_ENGINE:-csessions.backends.shm} \
	  ../$(VENV)/bin/python manage.py runserver 127.0.0.1:8000

bench: build
	@dpkg -s wrk >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check "matplotlib>=3.8" gunicorn "lmdb>=1.4" 2>&1 | grep -v "^WARNING: Location" || true
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/shm.py --out bench/results
	$(VENV)/bin/python bench/scale.py
	$(VENV)/bin/python bench/site.py

# Fast regression check (CI): no csessions operation slower than its Django twin.
bench-check: build
	$(VENV)/bin/python bench/check.py

clean:
	rm -rf build $(VENV) $(VENV312) $(VENV310) $(VENV313) $(VENV_ASAN) csessions/*.so .cache
