//! A real browser for the viewer's tests: Debian's chromium, headless, driven over
//! WebDriver by chromedriver, and a [`Proxy`] between it and the server whose
//! connections a test can cut, as a network drop would.
//!
//! Why fantoccini + chromedriver: fantoccini is the maintained WebDriver client of the
//! Rust ecosystem, small, on the same hyper and tokio as the rest of the suite; WebDriver
//! is a W3C standard that chromedriver (Debian's `chromium-driver`, built with the
//! browser) speaks for the very chromium version installed, so the pair cannot drift
//! apart, unlike a CDP client whose generated protocol bindings follow Chrome releases.
//!
//! `bash .ci/test` installs both and sets `AGENT_STREAM_TEST_CHROMIUM` and
//! `AGENT_STREAM_TEST_CHROMEDRIVER`; without them, `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` are used if present. A missing browser fails the test: it is
//! never skipped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use agent_stream_testkit::app::WAIT;

fn tool(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found (set {env}): the viewer's tests need Debian's chromium and chromedriver. \
         Run the suite with `bash .ci/test`, which installs them, or `apt-get install chromium chromium-driver`",
        path.display()
    );
    path
}

/// A headless chromium under its own chromedriver, gone (with its browser) when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    pub async fn launch() -> Self {
        let chromium = tool("AGENT_STREAM_TEST_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("AGENT_STREAM_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let profile = TempDir::new();
        // Its own process group, so that dropping it ends the browser it started too.
        let mut driver = Command::new(&chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let port = driver_port(&mut driver).await;
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                // Without the background-networking flags, a sandboxed machine's
                // chromium has its connections refused; --no-sandbox because CI runs as root.
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1000,1400",
                    format!("--user-data-dir={}", profile.0.display()),
                ],
            }
        });
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(
            capabilities
                .as_object()
                .expect("capabilities are an object")
                .clone(),
        );
        let client =
            tokio::time::timeout(WAIT, builder.connect(&format!("http://127.0.0.1:{port}")))
                .await
                .unwrap_or_else(|_| panic!("chromedriver did not start chromium within {WAIT:?}"))
                .unwrap_or_else(|e| {
                    panic!("chromedriver could not start {}: {e}", chromium.display())
                });
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body that `return`s) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("run {script:?} in the page: {e}"))
    }

    /// Waits until `script` returns `want`; panics with what it last returned.
    pub async fn wait_until(&self, what: &str, script: &str, want: Value) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.eval(script).await;
            if got == want {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {WAIT:?} for {what}: the page shows {got}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a screenshot as `<dir>/<name>.png` when `AGENT_STREAM_TEST_SCREENSHOTS` names
    /// a directory (to look at the viewer); does nothing otherwise.
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("AGENT_STREAM_TEST_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.expect("take a screenshot");
        let path = PathBuf::from(dir).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the session (chromedriver closes the browser) and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed never reached `close`: end the driver's whole group, the
        // browser included, rather than leave it running.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "agent-stream-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("create a chromium profile directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The port chromedriver (started with `--port=0`) says it listens on; the rest of its
/// output is read and dropped, so it never blocks on a full pipe.
async fn driver_port(driver: &mut Child) -> u16 {
    const STARTED: &str = "started successfully on port ";
    let stdout = driver
        .stdout
        .take()
        .expect("chromedriver's stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read chromedriver's output") {
            if let Some((_, rest)) = line.split_once(STARTED) {
                return rest.trim_end_matches('.').parse::<u16>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("chromedriver did not say which port it listens on within {WAIT:?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    port
}

/// A TCP proxy on a port of its own in front of the server: the browser's address for
/// it stays the same while the server behind moves (a restart binds a new port), and
/// [`Proxy::cut`] drops every connection and refuses new ones, as a network outage would.
pub struct Proxy {
    pub base: String,
    state: Arc<Mutex<ProxyState>>,
    stop: CancellationToken,
}

struct ProxyState {
    /// Where connections go; `None` while cut.
    target: Option<SocketAddr>,
    /// Cancelled to drop the connections open now.
    connections: CancellationToken,
}

impl Proxy {
    /// A proxy to `base` (`http://host:port`).
    pub async fn start(base: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let state = Arc::new(Mutex::new(ProxyState {
            target: Some(address(base)),
            connections: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        let proxy = Self {
            base: format!("http://{}", listener.local_addr().expect("local addr")),
            state: state.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let (target, connection) = {
                    let state = state.lock().unwrap();
                    (state.target, state.connections.clone())
                };
                // While cut, a connection is accepted and closed at once.
                let Some(target) = target else { continue };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = connection.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        proxy
    }

    /// Drops every connection and closes new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.target = None;
        state.connections.cancel();
        state.connections = CancellationToken::new();
    }

    /// Forwards new connections to `base` again.
    pub fn restore(&self, base: &str) {
        self.state.lock().unwrap().target = Some(address(base));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().unwrap().connections.cancel();
    }
}

fn address(base: &str) -> SocketAddr {
    base.strip_prefix("http://")
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("{base} is not http://<ip>:<port>"))
}
