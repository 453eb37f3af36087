"""A standalone Debian Dovecot for bench/imap: its own config, base_dir, log,
Maildir and index files in the run's folder, IMAP on a free loopback port, a
passwd-file user, no TLS, no DNS; everything else at Dovecot's defaults."""

import email.utils
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time

from measure import Server, measure
from procs import descendants, free_port, log, now, proc_cpu, wait_port


DOVECOT_CONF = """\
# Standalone Dovecot for bench/imap: loopback only, plaintext, no DNS, no TLS.
# Everything not set here is at Dovecot's default (mail_fsync = optimized, ...).
base_dir = {d}/run
state_dir = {d}/state
instance_name = omb-bench-dovecot-{port}
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_use_winbind = no
login_trusted_networks =
hostname = dovecot.bench.test
import_environment = TZ
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {uid}
first_valid_gid = {gid}
# 10 clients + the driver's own connections, all from 127.0.0.1 as one user.
mail_max_userip_connections = 1000
mail_location = maildir:{d}/Maildir:INDEX={d}/index
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
{login_extra}}}
{extra}"""

# Without root, Dovecot runs every process as the invoking user (no chroot, no setuid).
ROOTLESS_EXTRA = """\
service anvil {
  chroot =
}
service auth {
  user = $default_internal_user
}
service auth-worker {
  user = $default_internal_user
}
"""


def maildir_name(i, msg_lf, msg_crlf, mtime):
    # As Dovecot's own delivery names a file: S= its size, W= its size with CRLF.
    return f"{int(mtime)}.M{i:06d}P{os.getpid()}.bench,S={len(msg_lf)},W={len(msg_crlf)}"


class Dovecot:
    def __init__(self, run_dir, msgs, args):
        self.dir = d = os.path.join(run_dir, "dovecot")
        os.makedirs(d)
        os.chmod(run_dir, 0o755)
        os.chmod(d, 0o755)
        root = os.geteuid() == 0
        if root:
            uid, gid = 65534, 65534            # nobody:nogroup owns the mail
            internal_user, internal_group, login_user = "dovecot", "dovecot", "dovenull"
            for u in (internal_user, login_user):
                pwd.getpwnam(u)                # Debian's package makes both
        else:
            uid, gid = os.getuid(), os.getgid()
            internal_user = login_user = pwd.getpwuid(uid).pw_name
            internal_group = grp.getgrgid(gid).gr_name
        self.port = free_port()
        self.user, self.password = "bench", "bench-password"
        for sub in ("run", "state", "index", "home", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        for sub in ("index", "home", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            os.chown(os.path.join(d, sub), uid, gid)
        with open(os.path.join(d, "users"), "w") as f:
            f.write(f"{self.user}:{self.password}:{uid}:{gid}::{d}/home::\n")
        os.chmod(os.path.join(d, "users"), 0o644)
        self.conf = os.path.join(d, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(
                d=d, port=self.port, uid=500 if root else uid, gid=1 if root else gid,
                internal_user=internal_user, internal_group=internal_group, login_user=login_user,
                login_extra="" if root else "  chroot =\n", extra="" if root else ROOTLESS_EXTRA))

        t = now()
        new = os.path.join(d, "Maildir", "new")
        for i, m in enumerate(msgs):
            lf = m.replace(b"\r\n", b"\n")
            try:
                mtime = email.utils.parsedate_to_datetime(
                    re.search(rb"\r\nDate: ([^\r]+)", m).group(1).decode()).timestamp()
            except (AttributeError, ValueError, TypeError):
                mtime = time.time()
            p = os.path.join(new, maildir_name(i, lf, m, mtime))
            with open(p, "wb") as f:
                f.write(lf)
            os.utime(p, (mtime, mtime))
            if root:
                os.chown(p, uid, gid)
        self.fill_s = now() - t

        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.log = open(os.path.join(d, "dovecot.stderr"), "wb")
        self.proc = subprocess.Popen([binary, "-F", "-c", self.conf], stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        try:
            wait_port(self.port, 30, self.proc, "dovecot")
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; see {d}/dovecot.log and dovecot.stderr") from None

    def pids(self):
        return descendants(self.proc.pid) if self.proc.poll() is None else []

    def cpu(self):
        # Live processes, plus what the master collected from the ones that exited.
        return proc_cpu(self.proc.pid, children=True) + sum(proc_cpu(p) for p in self.pids()[1:])

    def server(self):
        return Server("dovecot", self.port, self.user, self.password, self.pids, self.cpu)

    def version(self):
        try:
            return subprocess.run([shutil.which("dovecot") or "/usr/sbin/dovecot", "--version"],
                                  capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def bench_dovecot(run_dir, msgs, mids, args):
    log(f"dovecot: writing {len(msgs)} messages into a Maildir ...")
    dv = Dovecot(run_dir, msgs, args)
    try:
        log(f"dovecot: {dv.version()} on 127.0.0.1:{dv.port} (Maildir written in {dv.fill_s:.1f} s)")
        r = measure(dv.server(), msgs, mids, args)
        r["version"] = dv.version()
        return r
    finally:
        dv.stop()
