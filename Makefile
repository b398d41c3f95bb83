# The two commands of the quick start: `make run` and `make test`; `make install` for production.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Production layout (Debian 12, as root): the program in its own venv where the unit's ExecStart
# points, the unit and sysusers file where systemd looks for local units, config in /etc/mailpipe.
# DESTDIR stages everything under a scratch root (the install test) and then touches nothing else.
# The system's Python, not whichever is first on PATH: a pyenv under /root is unreadable to the
# mailpipe user, and the venv links to its interpreter.
INSTALL_PYTHON ?= /usr/bin/python3
PREFIX ?= /opt/mailpipe
UNITDIR ?= /usr/local/lib/systemd/system
SYSUSERSDIR ?= /usr/local/lib/sysusers.d
MANDIR ?= /usr/local/share/man
DOCDIR ?= /usr/local/share/doc/mailpipe
CONFDIR ?= /etc/mailpipe
DESTDIR ?=

.PHONY: run test lint bench install

run: $(VENV)/.installed-run
	$(BIN)/mailpipe serve $(ARGS)

# Installs and enables nothing that runs: `systemctl enable --now mailpipe` is the operator's step,
# after editing $(CONFDIR)/mailpipe.toml (an existing one is kept).
install:
	test -x $(DESTDIR)$(PREFIX)/bin/python || $(INSTALL_PYTHON) -m venv $(DESTDIR)$(PREFIX) || { rm -rf $(DESTDIR)$(PREFIX); sh tests/system-deps.sh python3-venv && $(INSTALL_PYTHON) -m venv $(DESTDIR)$(PREFIX); }
	rm -rf build
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet --disable-pip-version-check --upgrade .
	install -D -m644 systemd/mailpipe.service $(DESTDIR)$(UNITDIR)/mailpipe.service
	install -D -m644 systemd/mailpipe.sysusers $(DESTDIR)$(SYSUSERSDIR)/mailpipe.conf
	install -d -m755 $(DESTDIR)/usr/local/sbin $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)
	ln -sf $(PREFIX)/bin/mailpipe $(DESTDIR)/usr/local/sbin/mailpipe
	$(DESTDIR)$(PREFIX)/bin/mailpipe help --man > $(DESTDIR)$(MANDIR)/man8/mailpipe.8
	install -m644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -d -m750 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(CONFDIR)/dkim
	test -e $(DESTDIR)$(CONFDIR)/mailpipe.toml || install -m640 systemd/mailpipe.toml $(DESTDIR)$(CONFDIR)/mailpipe.toml
	if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers $(SYSUSERSDIR)/mailpipe.conf && \
	  chgrp mailpipe $(CONFDIR) $(CONFDIR)/dkim $(CONFDIR)/mailpipe.toml && \
	  systemctl daemon-reload; \
	fi
	@echo "installed: $(PREFIX), $(UNITDIR)/mailpipe.service; edit $(CONFDIR)/mailpipe.toml, then:"
	@echo "  mailpipe check-config && systemctl enable --now mailpipe"

# Two workers: most of a test is waiting on a daemon subprocess, and each test file stays on one
# worker (its module fixtures set up once).
test: $(VENV)/.installed-test
	sh tests/system-deps.sh
	$(BIN)/pytest --numprocesses 2 --dist loadfile

lint: $(VENV)/.installed-test
	$(BIN)/ruff check mailpipe tests bench

bench: $(VENV)/.installed-test
	sh tests/system-deps.sh
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/triage.py
	$(BIN)/python bench/outbound.py

# Debian ships venv's pip bootstrap separately (python3-venv): install it when venv fails.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); sh tests/system-deps.sh python3-venv && $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed-run: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-run
