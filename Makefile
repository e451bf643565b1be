# Set-up, demo, tests and benchmarks. Every target installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages of the real consumers the tests run.
DEBIAN_PACKAGES := skopeo umoci

.PHONY: demo test bench system-packages postgres-packages clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] || ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# A real PostgreSQL server and a real distribution registry for the source tests.
postgres-packages:
	@command -v /usr/lib/postgresql/15/bin/initdb >/dev/null \
	  && command -v docker-registry >/dev/null \
	  || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	  postgresql docker-registry

demo: $(STAMP) system-packages
	$(PY) -m emulator.demo

test: $(STAMP) system-packages postgres-packages
	$(PY) -m pytest -q

# Byte-compiled first, as pip does for an installed wheel, so that no timed
# start-up compiles source (PYTHONDONTWRITEBYTECODE would otherwise keep it).
bench: $(STAMP) system-packages postgres-packages
	$(PY) -m compileall -q ocilayout emulator
	$(PY) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf $(VENV) demo-out .pytest_cache .benchmarks
