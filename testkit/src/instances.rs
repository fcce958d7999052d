//! Private, disposable server processes for fault drills: a Redis, a PostgreSQL cluster
//! and the agent-stream binary, each on its own free port on 127.0.0.1 with its files in
//! its own directory under /tmp. The drills kill, stop and restart them at will, so they
//! never touch the shared servers that `.ci/test` started for the other tests.
//!
//! Everything here is synchronous (std::process), so that `Drop` can clean up even when
//! a test panics: processes are killed and directories removed. A binary that cannot be
//! found is a panic (the drill fails), never a skip.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// A directory under /tmp, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "agent-stream-drill-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        // Readable by the unprivileged user PostgreSQL runs as.
        run_quiet(Command::new("chmod").arg("755").arg(&path), "chmod 755");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs a command to completion; panics with its output when it fails.
fn run_quiet(command: &mut Command, what: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {command:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{what} failed ({}): {command:?}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// `program` on PATH, if there.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Sends `signal` (e.g. `-TERM`) to `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until `GET /healthz` on `port` answers 200 (`what` says who, for the panic,
/// with the end of its log).
fn wait_healthy(what: &str, port: u16, child: Option<&mut Child>, log: &Path) {
    wait_until(
        what,
        START_TIMEOUT,
        child,
        || {
            raw_exchange(
                port,
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
        },
        || tail(log, 30),
    );
}

/// Polls `ready` until it holds; panics after `timeout` with `describe()`, or as soon
/// as `child` (when given) has exited.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut child: Option<&mut Child>,
    mut ready: impl FnMut() -> bool,
    describe: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return;
        }
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{what}: the process exited ({status}) before it was ready\n{}",
                    describe()
                );
            }
        }
        if Instant::now() > deadline {
            panic!("{what}: not ready after {timeout:?}\n{}", describe());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends `request` to 127.0.0.1:`port` and returns the whole answer, or `None` if the
/// port does not answer.
fn raw_exchange(port: u16, request: &[u8]) -> Option<String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buffer[..n]);
                // Redis answers a PING with one line and keeps the connection open.
                if request.starts_with(b"PING") && answer.ends_with(b"\r\n") {
                    break;
                }
            }
            Err(_) if !answer.is_empty() => break,
            Err(_) => return None,
        }
    }
    Some(String::from_utf8_lossy(&answer).into_owned())
}

// --- Redis -------------------------------------------------------------------------

/// The test CA and the server certificate it signed (for the name `localhost`), which
/// `bash .ci/test` makes: AGENT_STREAM_TEST_TLS_CA, _CERT and _KEY.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn from_env() -> Self {
        let file = |name: &str| {
            let path = env_nonempty(name).unwrap_or_else(|| {
                panic!("{name} is not set: the TLS drills need the test CA and server certificate that `bash .ci/test` makes (see start_tls_servers there)")
            });
            let path = PathBuf::from(path);
            assert!(path.is_file(), "{name}={} is not a file", path.display());
            path
        };
        Self {
            ca: file("AGENT_STREAM_TEST_TLS_CA"),
            cert: file("AGENT_STREAM_TEST_TLS_CERT"),
            key: file("AGENT_STREAM_TEST_TLS_KEY"),
        }
    }
}

/// A private `redis-server` without persistence.
pub struct Redis {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Over TLS only, with one user `agent` and this password.
    tls: Option<(TlsFiles, String)>,
}

impl Redis {
    /// AGENT_STREAM_TEST_REDIS_SERVER, else `redis-server` on PATH.
    pub fn binary() -> PathBuf {
        if let Some(path) = env_nonempty("AGENT_STREAM_TEST_REDIS_SERVER") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "AGENT_STREAM_TEST_REDIS_SERVER={} is not a file",
                path.display()
            );
            return path;
        }
        on_path("redis-server").unwrap_or_else(|| {
            panic!("the fault drills need redis-server: set AGENT_STREAM_TEST_REDIS_SERVER or put redis-server on PATH (`bash .ci/test` installs it and sets the variable)")
        })
    }

    /// Starts a Redis on a free port.
    pub fn start() -> Self {
        let mut redis = Self::reserve();
        redis.launch();
        redis
    }

    /// Picks a port and a directory but starts nothing (Redis "down at start").
    pub fn reserve() -> Self {
        Self {
            binary: Self::binary(),
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            tls: None,
        }
    }

    /// Starts a Redis that speaks TLS only, with `tls`'s certificate, and whose only
    /// user is `agent` with a password (so AUTH goes over TLS too).
    pub fn start_tls(tls: TlsFiles) -> Self {
        let mut redis = Self::reserve();
        let password = uuid::Uuid::new_v4().simple().to_string();
        fs::write(
            redis.acl_path(),
            format!("user default off\nuser agent on >{password} ~* &* +@all\n"),
        )
        .expect("write the Redis ACL file");
        redis.tls = Some((tls, password));
        redis.launch();
        redis
    }

    fn acl_path(&self) -> PathBuf {
        self.dir.path().join("users.acl")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match &self.tls {
            Some((_, password)) => format!("rediss://agent:{password}@localhost:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The pid of the running `redis-server`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts (or restarts) it on its port and waits until it answers PING.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "Redis is already running");
        let mut command = Command::new(&self.binary);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some((tls, _)) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no", "--aclfile"])
                .arg(self.acl_path()),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let (port, log, tls) = (self.port, self.log_path(), self.tls.is_some());
        wait_until(
            &format!("redis-server on port {port}"),
            START_TIMEOUT,
            self.child.as_mut(),
            // Over TLS, that it takes connections: an empty Redis is ready once it does.
            || match tls {
                false => raw_exchange(port, b"PING\r\n").is_some_and(|a| a.starts_with("+PONG")),
                true => TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok(),
            },
            || tail(&log, 20),
        );
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn log(&self) -> String {
        tail(&self.log_path(), 40)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- redis {} log (tail) ---\n{}", self.port, self.log());
        }
        self.kill();
    }
}

// --- PostgreSQL --------------------------------------------------------------------

/// A private PostgreSQL cluster (trust auth, user `postgres`, no fsync).
///
/// `synchronous_commit` stays on: with it off, a commit is acknowledged before its WAL
/// is written, and an immediate stop (a crash) loses it, so a drill would see a 201'd
/// message vanish for reasons of its own setup. `fsync = off` is safe here because the
/// operating system does not crash.
pub struct Postgres {
    bindir: PathBuf,
    /// The user initdb and pg_ctl run as (when we are root), through runuser.
    user: Option<String>,
    port: u16,
    dir: TempDir,
    running: bool,
}

impl Postgres {
    /// AGENT_STREAM_TEST_PG_BINDIR, else `pg_config --bindir`.
    pub fn bindir() -> PathBuf {
        let dir = match env_nonempty("AGENT_STREAM_TEST_PG_BINDIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let output = Command::new("pg_config").arg("--bindir").output().unwrap_or_else(|e| {
                    panic!("the fault drills need the PostgreSQL server binaries: set AGENT_STREAM_TEST_PG_BINDIR (`bash .ci/test` sets it) or put pg_config on PATH ({e})")
                });
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
            }
        };
        for program in ["initdb", "pg_ctl"] {
            assert!(
                dir.join(program).is_file(),
                "{} not found: set AGENT_STREAM_TEST_PG_BINDIR to the directory of initdb and pg_ctl (e.g. /usr/lib/postgresql/15/bin)",
                dir.join(program).display()
            );
        }
        dir
    }

    /// initdb into a fresh directory, then start.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`Postgres::start`], with `settings` (lines of `postgresql.conf`, such as
    /// `shared_preload_libraries = 'pg_stat_statements'`) added to the drills' own.
    pub fn start_with(settings: &str) -> Self {
        let mut pg = Self::init(settings);
        pg.launch();
        pg
    }

    /// Like [`Postgres::start`], with TLS on (`ssl = on`) with `tls`'s certificate;
    /// plain connections are still taken.
    pub fn start_tls(tls: &TlsFiles) -> Self {
        let mut pg =
            Self::init("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'");
        let data = pg.data();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        fs::copy(&tls.cert, &cert).expect("copy the server certificate");
        fs::copy(&tls.key, &key).expect("copy the server key");
        // PostgreSQL wants its key readable by its user alone.
        if let Some(user) = &pg.user {
            run_quiet(
                Command::new("chown").arg(user).arg(&cert).arg(&key),
                "chown the TLS files",
            );
        }
        run_quiet(
            Command::new("chmod").arg("600").arg(&key),
            "chmod the TLS key",
        );
        pg.launch();
        pg
    }

    /// initdb into a fresh directory with the drills' settings and `settings`.
    fn init(settings: &str) -> Self {
        let user = is_root().then(|| {
            env_nonempty("AGENT_STREAM_TEST_PG_USER").unwrap_or_else(|| "postgres".to_owned())
        });
        let pg = Self {
            bindir: Self::bindir(),
            user,
            port: free_port(),
            dir: TempDir::new("pg"),
            running: false,
        };
        if let Some(user) = &pg.user {
            run_quiet(
                Command::new("chown").arg(user).arg(pg.dir.path()),
                &format!("chown the PostgreSQL directory to {user} (PostgreSQL refuses to run as root; set AGENT_STREAM_TEST_PG_USER to an existing unprivileged user)"),
            );
        }
        let data = pg.data();
        run_quiet(
            pg.command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync"])
                .args(["--no-locale", "-E", "UTF8"]),
            "initdb",
        );
        let conf = format!(
            "\n# agent-stream fault drill\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\nmax_connections = 100\nshared_buffers = 32MB\n{settings}\n",
            pg.port,
            pg.dir.path().display()
        );
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut file| file.write_all(conf.as_bytes()))
            .expect("write postgresql.conf");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command of the server's bin directory, run as the PostgreSQL user from a
    /// directory that user can read.
    fn command(&self, program: &str) -> Command {
        let program = self.bindir.join(program);
        let mut command = match &self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.current_dir(self.dir.path());
        command
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL over TLS that verifies everything: `localhost`, the name the test
    /// certificate is for, with `sslmode=verify-full` and the test CA.
    pub fn verify_full_url(&self, tls: &TlsFiles) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            tls.ca.display()
        )
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The postmaster's pid (its backends are its children), while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pidfile = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// Starts (or restarts) the cluster on its port and waits until it accepts
    /// connections (after crash recovery, following an immediate stop).
    pub fn launch(&mut self) {
        assert!(!self.running, "PostgreSQL is already running");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        self.running = true; // even on failure, so Drop tries to stop it
        assert!(
            output.status.success(),
            "pg_ctl start failed ({}): {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            tail(&self.log_path(), 30)
        );
    }

    /// `pg_ctl -m immediate stop`: every backend dies at once, as in a crash.
    pub fn stop_immediate(&mut self) {
        if !self.running {
            return;
        }
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
        if !matches!(status, Ok(s) if s.success()) {
            self.kill_postmaster();
        }
    }

    /// The last resort: SIGKILL the postmaster named in postmaster.pid.
    fn kill_postmaster(&self) {
        if let Ok(pidfile) = fs::read_to_string(self.data().join("postmaster.pid")) {
            if let Some(pid) = pidfile
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok())
            {
                send_signal(pid, "-KILL");
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop_immediate();
        self.launch();
    }

    pub fn log(&self) -> String {
        tail(&self.log_path(), 40)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- postgres {} log (tail) ---\n{}", self.port, self.log());
        }
        if self.running || self.data().join("postmaster.pid").exists() {
            self.running = true;
            self.stop_immediate();
        }
    }
}

// --- agent-stream ------------------------------------------------------------------

/// The agent-stream binary, serving on a fixed port of 127.0.0.1.
pub struct Server {
    binary: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
    /// The highest VmHWM (kB) read from any of its processes so far.
    peak_rss_kib: u64,
    starts: u32,
}

impl Server {
    /// Starts `agent-stream serve` on a free port with these backends and extra flags,
    /// and waits until `/healthz` answers.
    pub fn start(database_url: &str, redis_url: Option<&str>, args: &[&str]) -> Self {
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database_url.to_owned()),
            ("AGENT_STREAM_LOG".to_owned(), "info,sqlx=warn".to_owned()),
        ];
        if let Some(redis_url) = redis_url {
            env.push(("REDIS_URL".to_owned(), redis_url.to_owned()));
        }
        let mut server = Self {
            binary: Self::binary(),
            port: free_port(),
            env,
            args: args.iter().map(|a| a.to_string()).collect(),
            dir: TempDir::new("server"),
            child: None,
            peak_rss_kib: 0,
            starts: 0,
        };
        server.launch();
        server
    }

    /// AGENT_STREAM_TEST_BINARY, else the `agent-stream` that cargo built beside the
    /// running test or bench (`target/<profile>/`, above its `deps/`): cargo builds a
    /// package's binaries for its tests and benches, but names them (CARGO_BIN_EXE_*)
    /// only to that package's own targets, not to this crate.
    pub fn binary() -> PathBuf {
        if let Some(path) = env_nonempty("AGENT_STREAM_TEST_BINARY") {
            return PathBuf::from(path);
        }
        let running = std::env::current_exe().expect("the running test's path");
        let binary = running
            .parent()
            .and_then(Path::parent)
            .map(|profile| profile.join("agent-stream"))
            .filter(|binary| binary.is_file());
        binary.unwrap_or_else(|| {
            panic!("agent-stream not found beside {}: run the tests and benches with cargo, or set AGENT_STREAM_TEST_BINARY", running.display())
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent-stream.log")
    }

    /// Starts (or restarts) it on its port and waits for `/healthz`.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        let mut command = Command::new(&self.binary);
        for (name, _) in std::env::vars() {
            // Only the configuration given here: not the suite's shared servers.
            if name.starts_with("AGENT_STREAM_") || name == "DATABASE_URL" || name == "REDIS_URL" {
                command.env_remove(name);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            // The drills are about faults, not auth: open, as loopback allows.
            .arg("--no-auth")
            // To look into a bench's server: e.g. `info,agent_stream::follow=debug`.
            .args(
                std::env::var("AGENT_STREAM_KEEP_SERVER_LOG_FILTER")
                    .map(|filter| vec!["--log".to_owned(), filter])
                    .unwrap_or_default(),
            )
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.starts += 1;
        let (port, log) = (self.port, self.log_path());
        wait_healthy(
            &format!("agent-stream on port {port}"),
            port,
            self.child.as_mut(),
            &log,
        );
    }

    /// Reads the process's peak resident memory (VmHWM) into the running maximum.
    pub fn sample_memory(&mut self) -> u64 {
        if let Some(pid) = self.pid() {
            if let Some(kib) = vm_hwm_kib(pid) {
                self.peak_rss_kib = self.peak_rss_kib.max(kib);
            }
        }
        self.peak_rss_kib
    }

    /// Its resident memory now (VmRSS), in kB; `None` while it is not running.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid().and_then(vm_rss_kib)
    }

    /// The highest VmHWM seen over every run of the server, in kB.
    pub fn peak_rss_kib(&mut self) -> u64 {
        self.sample_memory()
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(&mut self) {
        self.sample_memory();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns at once; see [`Server::wait_exit`].
    pub fn sigterm(&mut self) {
        self.sample_memory();
        if let Some(pid) = self.pid() {
            send_signal(pid, "-TERM");
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running
    /// (it is then left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        tail(&self.log_path(), 60)
    }

    /// The whole log of every run so far.
    pub fn full_log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- agent-stream {} log (tail) ---\n{}",
                self.port,
                self.log()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // To read a bench's server log after the run: its directory goes with it.
        if let Some(keep) = std::env::var_os("AGENT_STREAM_KEEP_SERVER_LOG") {
            let _ = fs::copy(self.log_path(), keep);
        }
    }
}

/// VmHWM (peak resident set) of a process, in kB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// VmRSS (resident set now) of a process, in kB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// A `kB` field of /proc/<pid>/status, e.g. `VmRSS:`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
}

// --- HAProxy -----------------------------------------------------------------------

/// The timeouts of a generated HAProxy configuration.
#[derive(Debug, Clone, Copy)]
pub struct HaproxyTimeouts {
    /// `timeout client` and `timeout server`: how long a response (a follow) may stay
    /// silent before HAProxy cuts it. Must exceed the servers' `--heartbeat`.
    pub quiet: Duration,
    /// `inter` of the health checks (`fall 2 rise 2`).
    pub check_interval: Duration,
}

/// HAProxy in front of agent-stream instances on 127.0.0.1, in the foreground, with its
/// configuration generated into its own directory and its admin socket there.
pub struct Haproxy {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Haproxy {
    /// AGENT_STREAM_TEST_HAPROXY, else `haproxy` on PATH or in /usr/sbin.
    pub fn binary() -> PathBuf {
        if let Some(path) = env_nonempty("AGENT_STREAM_TEST_HAPROXY") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "AGENT_STREAM_TEST_HAPROXY={} is not a file",
                path.display()
            );
            return path;
        }
        on_path("haproxy")
            .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.is_file()))
            .unwrap_or_else(|| {
                panic!("the fleet drill needs HAProxy: install Debian's package (`apt-get install haproxy`; `bash .ci/test` installs it and sets AGENT_STREAM_TEST_HAPROXY) or set AGENT_STREAM_TEST_HAPROXY to the binary")
            })
    }

    /// The configuration: one frontend on `port`, one backend of `servers` (name,
    /// port), health-checked on `/healthz`. docs/operating.md's "Deploying behind a proxy" shows
    /// the same configuration with production timeouts.
    pub fn config(
        dir: &Path,
        port: u16,
        servers: &[(String, u16)],
        timeouts: HaproxyTimeouts,
    ) -> String {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut config = format!(
            "global
    maxconn 4096
    stats socket {dir}/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client {quiet}
    timeout server {quiet}
    timeout tunnel {quiet}
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout check 1s
    retries 3
    option redispatch 1

frontend agent_stream
    bind 127.0.0.1:{port}
    default_backend agent_stream

backend agent_stream
    balance leastconn
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server check inter {inter} fall 2 rise 2
",
            dir = dir.display(),
            quiet = ms(timeouts.quiet),
            inter = ms(timeouts.check_interval),
        );
        for (name, server_port) in servers {
            config.push_str(&format!("    server {name} 127.0.0.1:{server_port}\n"));
        }
        config
    }

    /// Writes the configuration, checks it (`haproxy -c`), starts HAProxy and waits
    /// until its frontend answers `/healthz` through a server.
    pub fn start(servers: &[(String, u16)], timeouts: HaproxyTimeouts) -> Self {
        let mut haproxy = Self {
            binary: Self::binary(),
            port: free_port(),
            dir: TempDir::new("haproxy"),
            child: None,
        };
        let config = Self::config(haproxy.dir.path(), haproxy.port, servers, timeouts);
        fs::write(haproxy.config_path(), config).expect("write haproxy.cfg");
        run_quiet(
            Command::new(&haproxy.binary)
                .arg("-c")
                .arg("-f")
                .arg(haproxy.config_path()),
            "haproxy -c (check the generated configuration)",
        );
        let log = fs::File::create(haproxy.log_path()).expect("create the HAProxy log");
        let child = Command::new(&haproxy.binary)
            .arg("-db") // foreground: it is our child, and dies with the drill
            .arg("-f")
            .arg(haproxy.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", haproxy.binary.display()));
        haproxy.child = Some(child);
        let (port, log) = (haproxy.port, haproxy.log_path());
        wait_healthy(
            &format!("haproxy on port {port}"),
            port,
            haproxy.child.as_mut(),
            &log,
        );
        haproxy
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.cfg")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    pub fn config_text(&self) -> String {
        fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    /// `show stat` on the admin socket, for the backend's servers: name → (status,
    /// current sessions), e.g. `("a1", ("UP", 50))`.
    pub fn server_stats(&self) -> Vec<(String, (String, u64))> {
        use std::os::unix::net::UnixStream;
        let Ok(mut socket) = UnixStream::connect(self.dir.path().join("admin.sock")) else {
            return Vec::new();
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
        if socket.write_all(b"show stat\n").is_err() {
            return Vec::new();
        }
        let mut csv = String::new();
        let _ = socket.read_to_string(&mut csv);
        // Columns: pxname, svname, qcur, qmax, scur, …, status is the 18th.
        csv.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| {
                f.len() > 17 && f[0] == "agent_stream" && f[1] != "FRONTEND" && f[1] != "BACKEND"
            })
            .map(|f| {
                (
                    f[1].to_owned(),
                    (f[17].to_owned(), f[4].parse().unwrap_or(0)),
                )
            })
            .collect()
    }

    pub fn log(&self) -> String {
        tail(&self.log_path(), 40)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- haproxy {} log (tail) ---\n{}", self.port, self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
