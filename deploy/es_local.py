"""A real, local, single-node Elasticsearch for development, tests, demos and benchmarks.

No Docker: the node comes from Elastic's integration-test distribution on Maven Central (fetched with
``mvn``), is cached outside the repository, and runs as an unprivileged system user on 127.0.0.1.

Example:
    >>> node = LocalElasticsearch(port=9250)          # doctest: +SKIP
    >>> node.start()                                  # doctest: +SKIP
    'http://127.0.0.1:9250'
    >>> node.stop()                                   # doctest: +SKIP

The integ-test distribution has the server, HTTP transport and x-pack core + security only: no
``analysis-common`` (BM25 uses the ``standard`` analyzer), no painless, no RRF/inference/rerank
(esdistill fuses and reranks client-side).

**Secure mode** (opt in: ``LocalElasticsearch(security=True)``, ``esdistill es start --secure``) runs
the same node with x-pack security on: HTTPS with a certificate for ``127.0.0.1``/``localhost``
signed by a CA of the node's own (both made once by the distribution's ``elasticsearch-certutil``),
and a password for the ``elastic`` user (the keystore's ``bootstrap.password``). The password comes
from ``ESDISTILL_ES_PASSWORD`` or is generated; either way it is written to a file readable only by
its owner (:attr:`LocalElasticsearch.password_file`) and never logged::

    >>> node = LocalElasticsearch(port=9250, security=True)   # doctest: +SKIP
    >>> node.start()                                          # doctest: +SKIP
    'https://127.0.0.1:9250'
    >>> node.ca_cert, node.password_file                      # doctest: +SKIP
    (PosixPath('.../nodes/9250/config/certs/ca.crt'), PosixPath('.../nodes/9250/elastic-password'))
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from esdistill.plugin._errors import ConfigError, LauncherError
from esdistill.plugin.models import user_cache_dir

__all__ = ["ES_VERSION", "LocalElasticsearch", "NodeStatus", "default_home", "find_java"]

logger = logging.getLogger(__name__)

#: The one place the tested Elasticsearch version lives. The newest release whose integ-test zip
#: resolved on Maven Central and started here (9.5.5 and 9.5.6 did not resolve on 2026-11-28).
ES_VERSION = "9.5.4"
#: ES 9 needs Java 21 or newer.
MIN_JAVA = 21
_ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
_DEP_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy"
_ES_USER = "esdistill"
#: the built-in superuser whose password secure mode sets
ELASTIC_USER = "elastic"
#: where secure mode reads the password from, when set (else one is generated)
PASSWORD_ENV = "ESDISTILL_ES_PASSWORD"
_MIN_PASSWORD = 8
#: health statuses of a node that serves: on one node, replicas are never placed, so yellow is ready
_SERVING = ("green", "yellow")


def default_home() -> Path:
    """Where extracted distributions and node folders live.

    When running as root the node runs as a system user that cannot enter root's home folder, so
    the default is ``/var/lib/esdistill``; otherwise ``~/.local/share/esdistill``. Override with
    ``ESDISTILL_HOME``.
    """
    env = os.environ.get("ESDISTILL_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/esdistill")
    return Path.home() / ".local" / "share" / "esdistill"


def _java_major(java_home: Path) -> int | None:
    release = java_home / "release"
    try:
        for line in release.read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                v = line.split("=", 1)[1].strip().strip('"')
                head = v.split(".")[0]
                return int(head if head != "1" else v.split(".")[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def find_java(min_major: int = MIN_JAVA) -> Path:
    """Return a JAVA_HOME with Java ``min_major`` or newer.

    Looks at ``ES_JAVA_HOME``, ``JAVA_HOME``, then ``/usr/lib/jvm/*`` (newest first).

    Raises:
        LauncherError: no suitable JDK is installed; the message says how to get one.
    """
    candidates: list[Path] = []
    for var in ("ES_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        found = [p for p in jvm.iterdir() if p.is_dir() and not p.is_symlink()]
        found.sort(key=lambda p: _java_major(p) or 0, reverse=True)
        candidates.extend(found)
    seen = []
    for home in candidates:
        major = _java_major(home)
        seen.append(f"{home} (Java {major})")
        if major is not None and major >= min_major and (home / "bin" / "java").exists():
            return home
    raise LauncherError(
        f"Elasticsearch {ES_VERSION} needs Java {min_major}+, and none was found "
        f"(looked at: {', '.join(seen) or 'nothing'}). Install a JDK {min_major}+ "
        "(e.g. `apt-get install openjdk-21-jdk-headless`, or Temurin) and set ES_JAVA_HOME to it."
    )


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already holds ``port`` (we cannot bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as servers do: a port in TIME_WAIT after a killed node is free to bind again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _http_json(url: str, timeout: float = 2.0, *, context: ssl.SSLContext | None = None,
               auth: str | None = None) -> dict | None:
    """GET ``url`` as JSON; ``None`` on any failure. ``auth``: an ``Authorization`` header value."""
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
            return json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (or is a zombie). Returns False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


@dataclass
class NodeStatus:
    """What ``esdistill es status`` reports."""

    url: str
    running: bool
    pid: int | None = None
    version: str | None = None
    health: str | None = None
    home: str | None = None
    secure: bool = False
    ca_cert: str | None = None
    password_file: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LocalElasticsearch:
    """A single-node Elasticsearch on 127.0.0.1, run from the cached integ-test distribution.

    Args:
        port: HTTP port.
        version: Elasticsearch version (default :data:`ES_VERSION`).
        data: the node's folder (config, data, logs, pid file). Default ``<home>/nodes/<port>``.
        heap: JVM heap, e.g. ``"512m"`` or ``"1g"``.
        home: where distributions are extracted (default :func:`default_home`).
        extra_settings: more ``elasticsearch.yml`` settings (they win over esdistill's).
        security: run with x-pack security: HTTPS (a CA and certificate of the node's own) and a
            password for the ``elastic`` user. Off by default.
        password: the ``elastic`` password in secure mode (default: ``ESDISTILL_ES_PASSWORD``, else
            the one in :attr:`password_file`, else a generated one). Never logged.
    """

    port: int = 9200
    version: str = ES_VERSION
    data: Path | None = None
    heap: str = "1g"
    home: Path | None = None
    extra_settings: dict[str, object] = field(default_factory=dict)
    security: bool = False
    password: str | None = field(default=None, repr=False)
    _launcher: subprocess.Popen | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (1 <= int(self.port) <= 65535):
            raise ConfigError(f"--port {self.port} is not a TCP port; use 1..65535 (e.g. 9200)")
        if not self.heap or self.heap[-1].lower() not in "mg" or not self.heap[:-1].isdigit():
            raise ConfigError(f"--heap {self.heap!r} is not a JVM size; use e.g. 512m or 1g")
        if self.password is not None and not self.security:
            raise ConfigError("a password only applies to a secure node; pass security=True (--secure)")
        if self.password is not None:
            _check_password(self.password, "password=")
        self.home = Path(self.home) if self.home else default_home()
        self.data = Path(self.data) if self.data else self.home / "nodes" / str(self.port)

    # ----------------------------------------------------------------------------- paths
    @property
    def url(self) -> str:
        return f"{'https' if self.security else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate that signed the node's HTTPS certificate (secure mode)."""
        assert self.data is not None
        return self.data / "config" / "certs" / "ca.crt"

    @property
    def password_file(self) -> Path:
        """The file (mode 0600) holding the ``elastic`` user's password (secure mode)."""
        assert self.data is not None
        return self.data / "elastic-password"

    @property
    def _security_dir(self) -> Path:
        assert self.data is not None
        return self.data / "security"

    @property
    def dist_dir(self) -> Path:
        assert self.home is not None
        return self.home / "dist" / f"elasticsearch-{self.version}"

    @property
    def pid_file(self) -> Path:
        assert self.data is not None
        return self.data / "es.pid"

    @property
    def log_file(self) -> Path:
        assert self.data is not None
        return self.data / "logs" / "stdout.log"

    # ----------------------------------------------------------------------------- fetch
    def fetch(self) -> Path:
        """Download (once) and extract (once) the distribution; return its folder."""
        if (self.dist_dir / "bin" / "elasticsearch").exists():
            logger.info("using cached Elasticsearch %s at %s", self.version, self.dist_dir)
            return self.dist_dir
        zip_path = user_cache_dir("elasticsearch") / f"elasticsearch-{self.version}.zip"
        if not zip_path.exists():
            mvn = shutil.which("mvn")
            if mvn is None:
                raise LauncherError(
                    "Maven (`mvn`) is needed once to fetch Elasticsearch from Maven Central; "
                    "install it (e.g. `apt-get install maven`) or put the zip at " + str(zip_path)
                )
            zip_path.parent.mkdir(parents=True, exist_ok=True)
            logger.info("fetching Elasticsearch %s from Maven Central (once)", self.version)
            cmd = [
                mvn, "-B", "-q", _DEP_PLUGIN,
                f"-Dartifact={_ARTIFACT.format(version=self.version)}",
                f"-DoutputDirectory={zip_path.parent}",
            ]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode != 0 or not zip_path.exists():
                raise LauncherError(
                    f"could not fetch Elasticsearch {self.version} with Maven (exit {proc.returncode}). "
                    "Check the version exists as an integ-test zip, or pass --version.",
                    log_tail="\n".join((proc.stdout + proc.stderr).splitlines()[-20:]),
                )
        tmp = self.dist_dir.with_name(self.dist_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        inner = next(p for p in tmp.iterdir() if p.is_dir())
        # zipfile drops the executable bits: restore them for launchers and native helpers
        for sub in ("bin", "modules", "lib"):
            for p in (inner / sub).rglob("*"):
                if p.is_file() and (sub == "bin" or p.suffix in ("", ".sh")):
                    p.chmod(0o755)
        shutil.rmtree(self.dist_dir, ignore_errors=True)
        inner.rename(self.dist_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        for p in [self.dist_dir, *self.dist_dir.parents]:
            if p == Path("/"):
                break
            try:
                p.chmod(p.stat().st_mode | 0o055)  # the ES user must traverse and read it
            except PermissionError:
                break
        return self.dist_dir

    # ----------------------------------------------------------------------------- lifecycle
    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return None
        # guard against a recycled pid: it must be *our* node
        return pid if "org.elasticsearch" in cmdline and str(self.data) in cmdline else None

    def _get(self, path: str, timeout: float = 2.0) -> dict | None:
        """GET a path of the node as JSON (with the CA and the password in secure mode)."""
        if not self.security:
            return _http_json(f"{self.url}{path}", timeout)
        password = self._known_password()
        if password is None or not self.ca_cert.is_file():
            return None
        token = base64.b64encode(f"{ELASTIC_USER}:{password}".encode()).decode()
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        return _http_json(f"{self.url}{path}", timeout, context=context, auth=f"Basic {token}")

    def status(self) -> NodeStatus:
        """Report whether our node runs, its version and cluster health."""
        pid = self._pid()
        health = self._get("/_cluster/health") if _port_open(self.port) else None
        version = None
        if health is not None:
            info = self._get("/_nodes/_local/version")
            if info and info.get("nodes"):
                version = next(iter(info["nodes"].values())).get("version")
        return NodeStatus(
            url=self.url,
            running=pid is not None or health is not None,
            pid=pid,
            version=version,
            health=(health or {}).get("status"),
            home=str(self.data),
            secure=self.security,
            ca_cert=str(self.ca_cert) if self.security else None,
            password_file=str(self.password_file) if self.security else None,
        )

    # ----------------------------------------------------------------------------- secure mode
    def _known_password(self) -> str | None:
        if self.password is not None:
            return self.password
        try:
            return self.password_file.read_text().strip() or None
        except OSError:
            return None

    def _ensure_password(self) -> str:
        """Decide the ``elastic`` password (argument, environment, file, or new) and store it 0600."""
        password = self.password or os.environ.get(PASSWORD_ENV) or None
        if password is not None:
            _check_password(password, f"{PASSWORD_ENV}" if self.password is None else "password=")
        else:
            password = self._known_password() or secrets.token_urlsafe(24)
        _write_private(self.password_file, password + "\n")
        self.password = password
        return password

    def _tool(self, name: str, args: list[str], java_home: Path, conf: Path, *, stdin: str | None = None,
              timeout: float = 180.0) -> None:
        """Run one of the distribution's command-line tools (certutil, keystore)."""
        env = dict(os.environ, ES_JAVA_HOME=str(java_home), ES_PATH_CONF=str(conf))
        env.pop("JAVA_TOOL_OPTIONS", None)
        proc = subprocess.run([str(self.dist_dir / "bin" / name), *args], input=stdin, check=False,
                              capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            raise LauncherError(f"`{name} {args[0]}` failed (exit {proc.returncode}) while setting up the secure "
                                "node", log_tail="\n".join((proc.stdout + proc.stderr).splitlines()[-20:]))

    def _ensure_certs(self, java_home: Path, conf: Path) -> Path:
        """Make (once) a CA and an HTTPS certificate for 127.0.0.1/localhost; return their folder."""
        sec = self._security_dir
        names = ("ca.crt", "ca.key", "node.crt", "node.key")
        if all((sec / n).is_file() for n in names):
            return sec
        logger.info("creating a CA and an HTTPS certificate for the secure node in %s", sec)
        shutil.rmtree(sec, ignore_errors=True)
        sec.mkdir(parents=True)
        self._tool("elasticsearch-certutil", ["ca", "--silent", "--pem", "--out", str(sec / "ca.zip")],
                   java_home, conf)
        with zipfile.ZipFile(sec / "ca.zip") as zf:
            zf.extractall(sec / "ca-files")
        ca_crt, ca_key = sec / "ca-files" / "ca" / "ca.crt", sec / "ca-files" / "ca" / "ca.key"
        self._tool("elasticsearch-certutil",
                   ["cert", "--silent", "--pem", "--ca-cert", str(ca_crt), "--ca-key", str(ca_key),
                    "--ip", "127.0.0.1", "--dns", "localhost", "--name", "node", "--out", str(sec / "node.zip")],
                   java_home, conf)
        with zipfile.ZipFile(sec / "node.zip") as zf:
            zf.extractall(sec / "node-files")
        for src, name in ((ca_crt, "ca.crt"), (ca_key, "ca.key"), (sec / "node-files" / "node" / "node.crt",
                          "node.crt"), (sec / "node-files" / "node" / "node.key", "node.key")):
            shutil.move(str(src), sec / name)
        for leftover in ("ca.zip", "node.zip", "ca-files", "node-files"):
            p = sec / leftover
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for key in ("ca.key", "node.key"):
            (sec / key).chmod(0o600)
        return sec

    def _secure_config(self, java_home: Path, conf: Path) -> dict[str, object]:
        """Certificates into ``config/certs``, the password into the keystore; the settings to add."""
        sec = self._ensure_certs(java_home, conf)
        certs = conf / "certs"
        certs.mkdir(exist_ok=True)
        for name in ("ca.crt", "node.crt", "node.key"):
            shutil.copy2(sec / name, certs / name)
        password = self._ensure_password()
        # the password goes in on stdin, never on a command line
        self._tool("elasticsearch-keystore", ["add", "--force", "--stdin", "bootstrap.password"], java_home, conf,
                   stdin=password + "\n")
        return {
            "xpack.security.enabled": True,
            "xpack.security.http.ssl.enabled": True,
            "xpack.security.http.ssl.key": "certs/node.key",
            "xpack.security.http.ssl.certificate": "certs/node.crt",
            "xpack.security.http.ssl.certificate_authorities": ["certs/ca.crt"],
            # one node, no transport peers: TLS on the transport layer is not required
            "xpack.security.transport.ssl.enabled": False,
        }

    def _write_config(self, java_home: Path) -> Path:
        assert self.data is not None
        conf = self.data / "config"
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(self.dist_dir / "config", conf)
        (self.data / "data").mkdir(parents=True, exist_ok=True)
        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        (self.data / "tmp").mkdir(parents=True, exist_ok=True)
        settings: dict[str, object] = {
            "cluster.name": f"esdistill-{self.port}",
            "node.name": "esdistill-local",
            "network.host": "127.0.0.1",
            "http.port": self.port,
            "transport.port": 0,
            "discovery.type": "single-node",
            "path.data": str(self.data / "data"),
            "path.logs": str(self.data / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": False,
            "xpack.security.enabled": False,
            "action.destructive_requires_name": False,
        }
        if self.security:
            settings.update(self._secure_config(java_home, conf))
        settings.update(self.extra_settings)
        (conf / "elasticsearch.yml").write_text(
            "".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items())
        )
        (conf / "jvm.options.d").mkdir(exist_ok=True)
        (conf / "jvm.options.d" / "heap.options").write_text(f"-Xms{self.heap}\n-Xmx{self.heap}\n")
        return conf

    def _ensure_user(self) -> str | None:
        """Return the user to run ES as (None: the current user). Creates it when root."""
        if os.geteuid() != 0:
            return None
        if subprocess.run(["id", "-u", _ES_USER], check=False, capture_output=True).returncode != 0:
            proc = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _ES_USER],
                check=False, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise LauncherError(
                    f"Elasticsearch refuses to run as root and the user {_ES_USER!r} could not be "
                    f"created: {proc.stderr.strip()}. Run esdistill as a normal user instead."
                )
        return _ES_USER

    def start(self, *, timeout: float = 180.0) -> str:
        """Start the node (a no-op when it already runs) and wait until it serves. Returns its URL.

        The node serves once its health is yellow or green: on one node the replicas of an index
        that asks for them can never be placed, so yellow is as good as it gets there. A node that
        answered its health endpoint is never killed, not even when it stays red past ``timeout``:
        it is reported and left running (``esdistill es stop`` stops it). Only a node that never
        answered (a half-started process) is killed when the wait fails.

        Raises:
            LauncherError: the port is taken by something else, Java or Maven is missing, or the node
                did not serve in time (the message carries its health or the log tail).
        """
        st = self.status()
        if st.pid is not None:
            logger.info("Elasticsearch already running at %s (pid %s)", self.url, st.pid)
            self._wait_ready(timeout)
            return self.url
        if _port_open(self.port):
            raise LauncherError(
                f"port {self.port} on 127.0.0.1 is already in use by another process "
                f"(health: {st.health or 'not Elasticsearch or not ours'}). Pick another with --port, "
                "or stop what listens there."
            )
        java_home = find_java()
        self.fetch()
        conf = self._write_config(java_home)
        assert self.data is not None
        user = self._ensure_user()
        if user is not None:
            subprocess.run(["chown", "-R", f"{user}:", str(self.data)], check=True)
            if self.password_file.exists():  # the password stays ours, not the node user's
                os.chown(self.password_file, os.getuid(), os.getgid())
            # every folder above the node folder must be traversable by that user
            for p in self.data.parents:
                if p == Path("/"):
                    break
                try:
                    p.chmod(p.stat().st_mode | 0o011)
                except PermissionError:
                    break
        env = dict(os.environ)
        env.update(
            ES_JAVA_HOME=str(java_home),
            ES_PATH_CONF=str(conf),
            ES_TMPDIR=str(self.data / "tmp"),
        )
        env.pop("JAVA_TOOL_OPTIONS", None)
        cmd = [str(self.dist_dir / "bin" / "elasticsearch"), "-p", str(self.pid_file)]
        if user is not None:
            keep = "ES_JAVA_HOME,ES_PATH_CONF,ES_TMPDIR"
            cmd = ["runuser", "-u", user, f"--whitelist-environment={keep}", "--", *cmd]
        self.pid_file.unlink(missing_ok=True)
        logger.info("starting Elasticsearch %s on %s (heap %s, java %s%s)", self.version, self.url, self.heap,
                    java_home, ", TLS and password" if self.security else "")
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=str(self.data), start_new_session=True,
            )
        self._launcher = proc  # kept so that stop() can reap it
        answered: list[dict] = []
        try:
            self._wait_ready(timeout, launcher=proc, answered=answered)
        except BaseException:
            if not answered:  # never leave a half-started node behind; a node that answered stays
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._reap()
            raise
        return self.url

    def _wait_ready(self, timeout: float, *, launcher: subprocess.Popen | None = None,
                    answered: list[dict] | None = None) -> None:
        """Wait until the node's health is yellow or green; every health answer is appended to ``answered``."""
        answered = [] if answered is None else answered
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if launcher is not None and launcher.poll() is not None:
                raise LauncherError(
                    f"Elasticsearch exited during start-up (code {launcher.returncode}); "
                    f"see {self.log_file}", log_tail=_tail(self.log_file),
                )
            health = self._get("/_cluster/health", timeout=3)
            if health and health.get("status"):
                answered[:] = [health]
                if health["status"] in _SERVING and self._pid() is not None:
                    return
            time.sleep(0.5)
        if not answered:
            raise LauncherError(
                f"Elasticsearch did not answer within {timeout:.0f}s at {self.url}; see {self.log_file}",
                log_tail=_tail(self.log_file),
            )
        health = answered[-1]
        raise LauncherError(
            f"Elasticsearch at {self.url} answers, but its health is still {health['status']} after {timeout:.0f}s "
            f"({health.get('unassigned_shards', '?')} unassigned shard(s), "
            f"{health.get('initializing_shards', '?')} initializing). It is left running (pid {self._pid()}): ask "
            f"{self.url}/_cluster/allocation/explain why, or stop it with `esdistill es stop --port {self.port}`",
            log_tail=_tail(self.log_file),
        )

    def stop(self, *, timeout: float = 60.0) -> bool:
        """Stop exactly the process this launcher started. Returns False when nothing ran."""
        pid = self._pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        if not _wait_exit(pid, timeout):
            logger.warning("Elasticsearch (pid %s) ignored SIGTERM for %.0fs; killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 30.0)
        self.pid_file.unlink(missing_ok=True)
        self._reap()
        return True

    def _reap(self) -> None:
        if self._launcher is not None:
            try:
                self._launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._launcher.kill()
                self._launcher.wait()

    def kill(self) -> int | None:
        """SIGKILL the node (fault-injection tests). Returns the pid that was killed."""
        pid = self._pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 30.0)
            self._reap()
        return pid


def _check_password(password: str, where: str) -> None:
    if not isinstance(password, str) or len(password) < _MIN_PASSWORD or password != password.strip():
        raise ConfigError(f"{where}: the elastic password must be at least {_MIN_PASSWORD} characters without "
                          "leading or trailing spaces (its value is not shown)")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
