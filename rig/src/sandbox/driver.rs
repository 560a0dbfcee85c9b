//! The sandbox binary as a user runs it, for its test: started as a child
//! process, waited on through its printed readiness line, driven with the
//! HTTP calls it prints, and read through the view it prints.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};

use super::{view::Frame, READY_LINE};
use crate::client;

/// The sandbox binary: `$SANDBOX_BIN`, else the one `cargo build -p
/// mulligan-rig --bin sandbox` leaves in the target directory, built first
/// so that it is never stale.
pub fn sandbox_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOX_BIN") {
        return p.into();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "mulligan-rig", "--bin", "sandbox"])
        .current_dir(crate::repo_root())
        .output()
        .expect("running cargo build for the sandbox");
    assert!(
        out.status.success(),
        "cargo build -p mulligan-rig --bin sandbox failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Tests run from target/<profile>/deps/: the binary is one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    dir.join("sandbox")
}

/// What the sandbox printed so far, split into its intro and view frames.
#[derive(Default)]
struct Output {
    lines: Vec<String>,
    frames: Vec<Frame>,
}

/// A running sandbox binary; stopped when dropped.
pub struct Driver {
    child: Child,
    /// The control port the printed commands call.
    pub control: SocketAddr,
    /// Everything printed before the readiness line.
    pub intro: String,
    output: Arc<Mutex<Output>>,
    latest: watch::Receiver<usize>,
}

impl Driver {
    /// Starts the sandbox with `args` (mulligan: [`crate::mulligan::mulligan_bin`];
    /// Envoy: `$ENVOY_BIN`) and waits, up to `limit`, for its readiness line.
    pub async fn start(args: &[&str], limit: Duration) -> Driver {
        let mut child = Command::new(sandbox_bin())
            .args(args)
            .env("MULLIGAN_BIN", crate::mulligan::mulligan_bin())
            .env("ENVOY_BIN", crate::envoy::envoy_bin())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the sandbox");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut intro = String::new();
        let ready = tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with(READY_LINE) {
                    return Some(line);
                }
                intro.push_str(&line);
                intro.push('\n');
            }
            None
        })
        .await;
        let line = match ready {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the sandbox exited before it was ready; it printed:\n{intro}"),
            Err(_) => panic!("the sandbox was not ready within {limit:?}; it printed:\n{intro}"),
        };
        let control = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("control="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no control= in {line:?}"));
        let output = Arc::new(Mutex::new(Output::default()));
        let (tx, latest) = watch::channel(0);
        let out = Arc::clone(&output);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut o = out.lock().unwrap();
                o.lines.push(line);
                let n = o.lines.len();
                if let Some(frame) = n.checked_sub(3).and_then(|i| Frame::parse(&o.lines[i..])) {
                    o.frames.push(frame);
                    let _ = tx.send(o.frames.len());
                }
            }
        });
        Driver {
            child,
            control,
            intro,
            output,
            latest,
        }
    }

    /// A command to the control port, as the printed curl sends it:
    /// `(status, text)`.
    pub async fn command(&self, method: http::Method, path: &str) -> (u16, String) {
        let r = client::HttpClient::new(client::Proto::Http1)
            .send(method, self.control, path, &[], client::empty())
            .await
            .unwrap_or_else(|e| panic!("{path} to the control port: {e}"));
        (
            r.status.as_u16(),
            String::from_utf8_lossy(&r.body).into_owned(),
        )
    }

    /// `POST path`, which must succeed; its text.
    pub async fn post(&self, path: &str) -> String {
        let (status, text) = self.command(http::Method::POST, path).await;
        assert_eq!(status, 200, "POST {path}: {text}");
        text
    }

    /// The last `n` frames of the view, as printed.
    pub fn recent(&self, n: usize) -> String {
        let o = self.output.lock().unwrap();
        let from = o.frames.len().saturating_sub(n);
        let texts: Vec<&str> = o.frames[from..].iter().map(|f| f.text.as_str()).collect();
        texts.join("\n")
    }

    /// Waits, up to `limit`, for a frame printed from now on for which
    /// `want` holds; panics saying `what` and the frames it saw.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        want: impl Fn(&Frame) -> bool,
    ) -> Frame {
        let seen = *self.latest.borrow_and_update();
        let found = tokio::time::timeout(limit, async {
            let mut next = seen;
            loop {
                if self.latest.changed().await.is_err() {
                    return None;
                }
                let o = self.output.lock().unwrap();
                for f in &o.frames[next..] {
                    if want(f) {
                        return Some(f.clone());
                    }
                }
                next = o.frames.len();
            }
        })
        .await;
        match found {
            Ok(Some(f)) => f,
            Ok(None) => panic!(
                "{what}: the sandbox exited; its last frames:\n{}",
                self.recent(8)
            ),
            Err(_) => panic!(
                "{what}: not seen within {limit:?}; the last frames:\n{}",
                self.recent(8)
            ),
        }
    }
}

impl Drop for Driver {
    /// SIGTERM, as Ctrl-C would: the sandbox stops Envoy and mulligan
    /// before it exits (a SIGKILL would leave them running). SIGKILL
    /// (`kill_on_drop`) only if it has not exited within ten seconds.
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            // Exit has no signal to wait on from a synchronous drop.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
