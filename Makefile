# ipsec-tunnel: `make demo` and `make test` set up everything they need on a fresh Debian 12 machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PREFIX ?= /usr/local
APT_PKGS = iproute2 iputils-ping net-tools kmod nftables tcpdump tshark iperf3 user-mode-linux man-db
PYTEST_ARGS ?=

.PHONY: all deps venv install demo test lint typecheck pytest soak bench clean

all: venv

# System packages the tests and the demo use (root, Debian). Installs only what is missing.
deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV) || (apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV))
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

venv: $(VENV)/.stamp

# The seed: "installed by running make install". Installs ipsecd, ipsecadm, man pages and the unit.
install:
	$(PYTHON) -m pip install .
	install -d $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 docs/ipsecadm.8 docs/ipsecd.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -d $(DESTDIR)/etc/systemd/system
	install -m 0644 docs/ipsecd.service $(DESTDIR)/etc/systemd/system/ipsecd.service
	-mandb -q >/dev/null 2>&1

demo: deps venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

test: deps venv lint typecheck pytest

soak: deps venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -m soak --run-soak $(PYTEST_ARGS)

bench: deps venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/core.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
