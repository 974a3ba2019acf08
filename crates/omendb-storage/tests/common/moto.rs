//! The S3 server the tests run against: moto's `moto_server`, started on a free loopback port
//! and killed when dropped. Shared by the storage tests and, by path, the engine's.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use omendb_storage::BackendOptions;
use omendb_storage::backend;

/// A `moto_server` child process, killed when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    buckets: AtomicU32,
}

impl Moto {
    /// Starts moto's S3 server (`python3 -m moto.server`, or the command in
    /// `$OMENDB_MOTO_SERVER`) on a free loopback port. A missing server fails the test:
    /// `cargo xtask test` installs it; a test is never skipped for want of it.
    pub fn start() -> Moto {
        let command = std::env::var("OMENDB_MOTO_SERVER")
            .unwrap_or_else(|_| "python3 -m moto.server".to_owned());
        let mut words = command.split_whitespace();
        let exe = words.next().expect("OMENDB_MOTO_SERVER names a command");
        // Port 0: the server binds a port the OS picks and logs it. A port picked here and
        // released for the server to bind could be taken in between by another test's server
        // (moto takes a second to import), and the probe below would then talk to that one.
        let mut child = Command::new(exe)
            .args(words)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start {command:?} ({err}); `cargo xtask test` installs moto \
                     (pip install 'moto[server]')"
                )
            });
        // The log is read to its end on a thread of its own, so the server never blocks on a
        // full pipe; the lines before the port are kept for a failure's message.
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines, logged) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut log = Vec::new();
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match logged.recv_timeout(left) {
                Ok(line) => {
                    let port = line
                        .split_once("Running on http://127.0.0.1:")
                        .and_then(|(_, port)| port.trim().parse::<u16>().ok());
                    if let Some(port) = port {
                        break port;
                    }
                    log.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("{command:?} logged no address within 30 s: {log:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "{command:?} exited ({status:?}) before listening: is moto[server] \
                         installed? (`cargo xtask test` installs it) {log:?}"
                    )
                }
            }
        };
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            buckets: AtomicU32::new(0),
        };
        while moto.request("GET", "/").is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("{command:?} exited with {status} after listening on port {port}");
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// Sends one plain HTTP/1.1 request and returns the status code (moto does not check
    /// signatures, so bucket creation needs no AWS client).
    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response: {response:.80}")))
    }

    /// Creates a new empty bucket and returns its name.
    pub fn bucket(&self) -> String {
        let name = format!(
            "omendb-test-{}",
            self.buckets.fetch_add(1, Ordering::Relaxed)
        );
        let status = self.request("PUT", &format!("/{name}")).unwrap();
        assert_eq!(status, 200, "creating bucket {name}");
        name
    }

    /// Backend options that point the S3 client at this server.
    pub fn options(&self) -> BackendOptions {
        BackendOptions::default()
            .option("endpoint", &self.endpoint)
            .option("region", "us-east-1")
            .option("access_key_id", "test")
            .option("secret_access_key", "test")
            .option("allow_http", "true")
            .option("virtual_hosted_style_request", "false")
    }

    /// `s3://<new bucket>/<prefix>` opened through OmenDB's URL parser.
    pub fn open_raw(&self, prefix: &str) -> Arc<dyn ObjectStore> {
        let url = format!("s3://{}/{prefix}", self.bucket());
        backend::open_raw(&url, &self.options()).unwrap().1
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
