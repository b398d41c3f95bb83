#!/bin/sh
# Installs the Debian packages the tests and benchmarks talk to, when they are missing and we are
# root: Postfix (smtp-sink, smtp-source as real SMTP peers), swaks (a real SMTP client),
# systemd (systemd-analyze for the unit checks), unbound (a real DNS server for the test zones),
# Dovecot (a real IMAP server holding the seed mailboxes placement probes look in),
# and promtool from the prometheus package (the alert rules' unit tests) — only that binary is
# extracted, so no Prometheus server is installed or started. Unless MAILPIPE_TEST_PG_URL names a
# server, a PostgreSQL must answer on 127.0.0.1:5432 (Debian's is installed and started when none
# does), with the role mailpipe_test the store tests log in as. Arguments name extra packages
# (python3-venv).
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || [ -x "$2" ] || missing="$missing $3"; }
need swaks /usr/bin/swaks swaks
need smtp-sink /usr/sbin/smtp-sink postfix
need systemd-analyze /usr/bin/systemd-analyze systemd
need unbound /usr/sbin/unbound unbound
need dovecot /usr/sbin/dovecot "dovecot-imapd"
# CPython's own e-mail test corpus, which the parser is tested against (Debian ships it apart).
if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.isdir(os.path.join(sysconfig.get_paths()["stdlib"], "test", "test_email", "data")))'; then
    missing="$missing libpython3.$(python3 -c 'import sys; print(sys.version_info.minor)')-testsuite"
fi
for pkg in "$@"; do missing="$missing $pkg"; done
need_promtool=""
command -v promtool >/dev/null 2>&1 || need_promtool=yes
pg_answers() { python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2)' 2>/dev/null; }
need_postgres=""
[ -z "${MAILPIPE_TEST_PG_URL:-}" ] && ! pg_answers && need_postgres=yes
[ -n "$need_postgres" ] && missing="$missing postgresql"
ensure_pg_role() {
    [ -n "${MAILPIPE_TEST_PG_URL:-}" ] && return 0
    [ "$(id -u)" = 0 ] && command -v psql >/dev/null 2>&1 || return 0
    su postgres -c "psql -qtAc \"DO \\\$\\\$ BEGIN CREATE ROLE mailpipe_test LOGIN CREATEDB PASSWORD 'mailpipe_test';
        EXCEPTION WHEN duplicate_object THEN NULL; END \\\$\\\$\"" >/dev/null 2>&1 || true
}
if [ -z "$missing" ] && [ -z "$need_promtool" ]; then
    ensure_pg_role
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "tests need Debian packages:$missing${need_promtool:+ prometheus (for promtool)} (run as root, or: sudo apt-get install$missing${need_promtool:+ prometheus})" >&2
    exit 1
fi
echo "installing:$missing${need_promtool:+ promtool}" >&2
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # The tests start their own Dovecot on a loopback port; the packaged system service is not wanted.
    case "$missing" in *dovecot*) systemctl disable --now dovecot >/dev/null 2>&1 || true ;; esac
fi
if [ -n "$need_postgres" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start 2>/dev/null || true
fi
ensure_pg_role
if [ -n "$need_promtool" ]; then
    work=$(mktemp -d)
    chmod 777 "$work"  # apt downloads as the _apt user
    (cd "$work" && apt-get download -qq prometheus >/dev/null && dpkg-deb -x prometheus_*.deb root)
    install -m 755 "$work/root/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$work"
fi
