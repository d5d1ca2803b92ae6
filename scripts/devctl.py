"""Start the project's own services and processes: `devctl.py run` and `devctl.py test`.

`run`   keeps PostgreSQL and Redis data under DATA_DIR (default .data/), migrates, loads the
        demo data, then runs the ASGI web server, one Celery worker and one beat until Ctrl-C,
        and stops everything it started.
`test`  starts a throwaway PostgreSQL cluster and Redis in a temporary folder (never the `run`
        data), runs ruff and pytest against them, removes them and exits with pytest's verdict.

Only the standard library is used, so this works before anything else is configured.
PostgreSQL refuses to run as root, so when we are root its cluster belongs to `postgres`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VENV_BIN = BASE_DIR / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
DB_NAME = "hfbill"
# Two database roles (docs/operations.md "Database roles"), created by `Postgres.start`:
# the owner of the database and its tables (runs migrations; CREATEDB so that the test suite
# can create its test database) and the application, which owns nothing.
OWNER_ROLE = "hfbill_owner"
APP_ROLE = "hfbill_app"  # config/settings.py DATABASE_APP_ROLE's default

# Defaults shared with config/settings.py: plain `manage.py` reaches what `make run` started.
DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63790
DEFAULT_WEB_PORT = 8000
DEFAULT_SIM_PORT = 8001  # the provider simulator; the demo providers point at it


# Both roles, created if missing and (re)set to what they may do. Loopback with trust auth,
# as the cluster was made (initdb --auth=trust), so no passwords; production: see the docs.
ROLES_SQL = f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
        CREATE ROLE {OWNER_ROLE} LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} LOGIN;
    END IF;
END $$;
ALTER ROLE {OWNER_ROLE} LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
"""  # noqa: S608 (our constants, no input)

# Run in the database: what older code created as `postgres` (tables, sequences, views, the
# ledger's trigger functions) now belongs to the owner. Idempotent; a no-op once done.
OWNERSHIP_SQL = f"""
DO $$
DECLARE
    obj record;
BEGIN
    FOR obj IN
        SELECT c.oid::regclass AS name,
               CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                              WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS what
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relowner = 'postgres'::regrole
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          -- sequences of identity and serial columns follow their table
          AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
        ORDER BY c.relkind = 'S'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO {OWNER_ROLE}', obj.what, obj.name);
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proowner = 'postgres'::regrole
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO {OWNER_ROLE}', obj.name);
    END LOOP;
END $$;
"""  # noqa: S608 (our constants, no input)


LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"  # provider URLs allowed there (the simulator)


def say(message: str) -> None:
    # A closed terminal or pipe must not abort a shutdown half-way.
    with contextlib.suppress(OSError):
        print(f"devctl: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    say(f"error: {message}")
    raise SystemExit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pg_bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        fail("PostgreSQL server binaries not found (run scripts/bootstrap.sh)")
    return candidates[-1].parent


def pg_user() -> pwd.struct_passwd | None:
    """The OS user PostgreSQL runs as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        fail("running as root but there is no `postgres` user to own the database cluster")
    return None


def as_pg_user(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    user = pg_user()
    if user is not None:
        cmd = ["runuser", "-u", user.pw_name, "--", *cmd]
    return subprocess.run(cmd, check=False, **kwargs)


def check_reachable(path: Path) -> None:
    """initdb runs as `postgres`: every parent folder must be traversable by it."""
    user = pg_user()
    if user is None:
        return
    probe = as_pg_user(["test", "-x", str(path)], capture_output=True)
    if probe.returncode != 0:
        fail(
            f"the postgres user cannot reach {path} (a parent folder is private). "
            "Set DATA_DIR to a folder it can reach, e.g. DATA_DIR=/var/tmp/hfbill-data"
        )


@dataclass
class Postgres:
    root: Path  # folder holding pgdata/ and postgresql.log
    port: int
    throwaway: bool = False

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def url(self) -> str:
        """The application's credentials (web, router, worker, beat): DATABASE_URL."""
        return f"postgres://{APP_ROLE}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def owner_url(self) -> str:
        """The tables' owner (migrate; the test suite's set-up): DATABASE_OWNER_URL."""
        return f"postgres://{OWNER_ROLE}@127.0.0.1:{self.port}/{DB_NAME}"

    def _chown(self, path: Path) -> None:
        user = pg_user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        bindir = pg_bindir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        check_reachable(self.root)
        if not (self.pgdata / "PG_VERSION").exists():
            say(f"creating PostgreSQL cluster in {self.pgdata}")
            self.pgdata.mkdir(exist_ok=True)
            self._chown(self.pgdata)
            result = as_pg_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",  # loopback only, see listen_addresses below
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                fail(f"initdb failed:\n{result.stdout}{result.stderr}")
        log = self.root / "postgresql.log"
        log.touch()
        self._chown(log)
        status = as_pg_user(
            [str(bindir / "pg_ctl"), "-D", str(self.pgdata), "status"], capture_output=True
        )
        if status.returncode == 0:
            say(f"PostgreSQL already running for {self.pgdata}")
        else:
            if port_open(self.port):
                fail(f"port {self.port} is taken by another program (set PG_PORT)")
            options = [
                f"-c port={self.port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                "-c max_connections=200",
            ]
            if self.throwaway:  # durability is pointless for a cluster deleted after the run
                options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            result = as_pg_user(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    " ".join(options),
                    "start",
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                fail(f"PostgreSQL did not start; see {log}:\n{log.read_text()[-2000:]}")
            say(f"PostgreSQL listening on 127.0.0.1:{self.port}")
        self._create_database(bindir)

    def _create_database(self, bindir: Path) -> None:
        """The two roles and the database, idempotently. A cluster made by older code (one
        role, `postgres`, owning everything) is upgraded: the roles are created and the
        database's objects handed to the owner; migration 0007 then grants the application
        its privileges."""
        psql = [
            str(bindir / "psql") if (bindir / "psql").exists() else "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
        ]

        def run(database: str, sql: str) -> str:
            result = subprocess.run(
                [*psql, "-d", database, "-c", sql], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                fail(f"PostgreSQL refused the database set-up: {result.stderr.strip()}")
            return result.stdout.strip()

        run("postgres", ROLES_SQL)
        exists = run("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'")  # noqa: S608
        if exists != "1":
            run("postgres", f"CREATE DATABASE {DB_NAME} OWNER {OWNER_ROLE}")
        run("postgres", f"ALTER DATABASE {DB_NAME} OWNER TO {OWNER_ROLE}")
        run(DB_NAME, OWNERSHIP_SQL)

    def stop(self) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            return
        as_pg_user(
            [str(pg_bindir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        say("PostgreSQL stopped")


@dataclass
class Redis:
    root: Path
    port: int
    throwaway: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.root / "redis.pid"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if not server:
            fail("redis-server not found (run scripts/bootstrap.sh)")
        self.root.mkdir(parents=True, exist_ok=True)
        if self._ping():
            say(f"Redis already running on 127.0.0.1:{self.port}")
            return
        if port_open(self.port):
            fail(f"port {self.port} is taken by another program (set REDIS_PORT)")
        persistence = (
            ["--save", "", "--appendonly", "no"]
            if self.throwaway
            else ["--save", "60 1", "--appendonly", "yes"]
        )
        subprocess.run(
            [
                server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.root),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
                "--logfile",
                str(self.root / "redis.log"),
                *persistence,
            ],
            check=True,
        )
        for _ in range(100):
            if self._ping():
                say(f"Redis listening on 127.0.0.1:{self.port}")
                return
            time.sleep(0.1)
        fail(f"Redis did not start; see {self.root / 'redis.log'}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
        say("Redis stopped")


@dataclass
class Services:
    postgres: Postgres
    redis: Redis
    stack: list = field(default_factory=list)

    def __enter__(self) -> Services:
        try:
            self.postgres.start()
            self.stack.append(self.postgres)
            self.redis.start()
            self.stack.append(self.redis)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self.stack:
            self.stack.pop().stop()


def read_dotenv(path: Path) -> dict[str, str]:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    return values


def write_local_env(updates: dict[str, str]) -> dict[str, str]:
    """Keep .env (read by config/settings.py) in step with what `make run` started.

    Secrets are generated once and kept, so sessions and encrypted fields survive restarts.
    """
    path = BASE_DIR / ".env"
    values = read_dotenv(path)
    values.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    values.setdefault("FIELD_ENCRYPTION_KEY", secrets.token_urlsafe(32))
    # DEBUG is off unless asked for (config/settings.py); `make run` is development. Kept if
    # edited, and plain `manage.py` from the checkout reads it too.
    values.setdefault("DEBUG", "true")
    values.update(updates)
    body = "".join(f"{key}={value}\n" for key, value in sorted(values.items()))
    path.write_text("# Written by `make run`; environment variables take precedence.\n" + body)
    path.chmod(0o600)
    return values


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=BASE_DIR, env=env, check=True)


def wait_http(url: str, timeout_s: float, procs: list[subprocess.Popen]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):  # noqa: S310
            return True
        time.sleep(0.3)
    return False


def cmd_run(_args: argparse.Namespace) -> int:
    data_dir = Path(os.environ.get("DATA_DIR", BASE_DIR / ".data")).resolve()
    host = os.environ.get("HOST", "127.0.0.1")
    web_port = int(os.environ.get("PORT", DEFAULT_WEB_PORT))
    pg = Postgres(data_dir / "postgres", int(os.environ.get("PG_PORT", DEFAULT_PG_PORT)))
    redis = Redis(data_dir / "redis", int(os.environ.get("REDIS_PORT", DEFAULT_REDIS_PORT)))
    sim_port = int(os.environ.get("SIM_PORT", DEFAULT_SIM_PORT))
    for port, var in ((web_port, "PORT"), (sim_port, "SIM_PORT")):
        if port_open(port):
            fail(f"port {port} is already in use (set {var})")

    urls = {"DATABASE_URL": pg.url, "DATABASE_OWNER_URL": pg.owner_url}
    local = write_local_env({**urls, "REDIS_URL": redis.url, "DATA_DIR": str(data_dir)})
    env = {
        **local,
        **os.environ,
        "SIMULATOR_URL": f"http://127.0.0.1:{sim_port}",
        "UPSTREAM_ALLOWED_NETWORKS": os.environ.get("UPSTREAM_ALLOWED_NETWORKS", LOOPBACK_NETWORKS),
        **urls,
        "REDIS_URL": redis.url,
        "DATA_DIR": str(data_dir),
    }

    with Services(pg, redis):
        manage("migrate", "--no-input", env={**env, "DATABASE_URL": pg.owner_url})  # as owner
        manage("collectstatic", "--no-input", "--verbosity", "0", env=env)
        demo = subprocess.run(
            [PYTHON, "manage.py", "demo_load"],
            cwd=BASE_DIR,
            env=env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout

        celery = str(VENV_BIN / "celery")
        commands = {
            "simulator": [PYTHON, "-m", "simulator", "--port", str(sim_port)],
            # The served configuration (config/serve.py: uvicorn, its timeouts and limits),
            # as the tests' web server (testsupport/processes.py) runs it.
            "web": [PYTHON, "-m", "config.serve", "--host", host, "--port", str(web_port)],
            "worker": [
                celery,
                "-A",
                "config.celery:app",
                "worker",
                "--loglevel=INFO",
                "--concurrency=2",
                "-n",
                "worker1@%h",
            ],
            "beat": [
                celery,
                "-A",
                "config.celery:app",
                "beat",
                "--loglevel=INFO",
                "--schedule",
                str(data_dir / "celerybeat-schedule"),
            ],
        }
        procs: dict[str, subprocess.Popen] = {}
        stopping = False

        def request_stop(_signum, _frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            for name, command in commands.items():
                # Own sessions: Ctrl-C reaches only us, and we stop the children in order.
                procs[name] = subprocess.Popen(
                    command, cwd=BASE_DIR, env=env, start_new_session=True
                )
            base = f"http://{host}:{web_port}"
            if wait_http(f"{base}/api/health", 60, list(procs.values())):
                print(
                    "\n"
                    "==============================================================\n"
                    f"  API          {base}/api/\n"
                    f"  API docs     {base}/api/docs\n"
                    f"  OpenAPI      {base}/api/schema\n"
                    f"  Admin        {base}/admin/\n"
                    f"  Health       {base}/api/health\n"
                    f"  Router       {base}/v1  (OpenAI base URL; models: {base}/v1/models)\n"
                    f"  Simulator    http://127.0.0.1:{sim_port}/<provider>  (demo providers)\n"
                    f"{demo}"
                    f"  Try: curl -H 'Authorization: Bearer <demo token>' {base}/api/whoami-v2\n"
                    f"  Chat: OpenAI(base_url='{base}/v1', api_key=<demo token>), model\n"
                    "        'meta-llama/Llama-3.1-8B-Instruct' (docs/router.md)\n"
                    "  Ctrl-C stops everything.\n"
                    "==============================================================\n",
                    flush=True,
                )
            while not stopping:
                dead = [name for name, p in procs.items() if p.poll() is not None]
                if dead:
                    say(f"{', '.join(dead)} exited; stopping everything")
                    break
                time.sleep(0.5)
        finally:
            for name in ("web", "beat", "worker", "simulator"):
                proc = procs.get(name)
                if proc and proc.poll() is None:
                    proc.terminate()
            for name, proc in procs.items():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    say(f"{name} did not stop in 30 s; killing it")
                    proc.kill()
            say("web, worker and beat stopped")
    return 0 if stopping else 1


@contextlib.contextmanager
def throwaway_services():
    """PostgreSQL and Redis on free ports in a temporary folder, removed afterwards.

    Yields the environment that points Django at them.
    """
    base_tmp = os.environ.get("TEST_DATA_DIR") or None
    root = Path(tempfile.mkdtemp(prefix="hfbill-test-", dir=base_tmp))
    root.chmod(0o755)
    (root / "static").mkdir()  # STATIC_ROOT (settings derive it from DATA_DIR)
    pg = Postgres(root / "postgres", free_port(), throwaway=True)
    redis = Redis(root / "redis", free_port(), throwaway=True)
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "DATABASE_OWNER_URL": pg.owner_url,  # the tests migrate and flush as the owner
        "REDIS_URL": redis.url,
        "DATA_DIR": str(root),
        # Production's settings (DEBUG off, keys of production's strength: config/settings.py,
        # Secure cookies, which Chromium accepts from http://localhost), but no redirect to
        # https: the tests' servers and clients speak plain http on loopback.
        "SECRET_KEY": "test-secret-key-not-for-production-" + "0123456789abcdef" * 2,
        "FIELD_ENCRYPTION_KEY": "test-field-encryption-key-not-for-production",
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "UPSTREAM_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,  # the provider simulator
    }
    try:
        with Services(pg, redis):
            yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cmd_test(args: argparse.Namespace) -> int:
    lint = subprocess.run([PYTHON, "-m", "ruff", "check", "."], cwd=BASE_DIR, check=False)
    fmt = subprocess.run(
        [PYTHON, "-m", "ruff", "format", "--check", "."], cwd=BASE_DIR, check=False
    )
    # The import contract (DESIGN §2; [tool.importlinter] in pyproject.toml). No cache: it
    # would leave a folder in the working tree, and the graph takes about a second to build.
    imports = subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache", "--no-logo"], cwd=BASE_DIR, check=False
    )
    with throwaway_services() as env:
        pytest_args = args.pytest_args or ["--cov", "--cov-report=term:skip-covered"]
        tests = subprocess.run(
            [PYTHON, "-m", "pytest", *pytest_args], cwd=BASE_DIR, env=env, check=False
        )
    if lint.returncode or fmt.returncode:
        say("ruff found problems (see above); `make format` fixes most of them")
    if imports.returncode:
        say(
            "lint-imports: the import contract is broken (see 'Broken contracts' above): an app"
            " imports a layer above it, core imports an app, or the simulator imports an app"
        )
    verdict = lint.returncode or fmt.returncode or imports.returncode or tests.returncode
    say("all checks passed" if verdict == 0 else f"FAILED (exit {verdict})")
    return verdict


def cmd_bench(args: argparse.Namespace) -> int:
    verdict = 0
    with throwaway_services() as env:
        as_owner = {**env, "DATABASE_URL": env["DATABASE_OWNER_URL"]}
        subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=BASE_DIR,
                       env=as_owner, check=True)  # fmt: skip
        for script in args.scripts:
            verdict |= subprocess.run([PYTHON, script], cwd=BASE_DIR, env=env).returncode
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the whole system with demo data")
    test = sub.add_parser("test", help="ruff + pytest against throwaway services")
    test.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    bench = sub.add_parser("bench", help="run benchmark scripts against throwaway services")
    bench.add_argument("scripts", nargs="+", help="e.g. bench/registry_api.py")
    args = parser.parse_args()
    return {"run": cmd_run, "test": cmd_test, "bench": cmd_bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
