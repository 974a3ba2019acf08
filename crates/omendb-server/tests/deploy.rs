#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! The packaging stays true to the binary: the Kubernetes ConfigMap's `omendb.toml` and the
//! Dockerfile's `OMENDB_*` settings load without error, and the probes name real endpoints.
//! (No container engine runs on the CI machines, so the image itself is not built here.)

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// `omendb config print` with `args` and environment `env`; its TOML, or the error it printed.
fn config_print(args: &[&str], env: &[(String, String)]) -> Result<omendb_server::Config, String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_omendb"));
    command.args(["config", "print"]).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("OMENDB_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().cloned());
    let output = command.output().unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap())
}

#[test]
fn the_configmap_holds_a_valid_configuration() {
    let yaml = read("deploy/k8s/configmap.yaml");
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("omendb.toml: |"));
    lines.next().expect("the ConfigMap has an omendb.toml");
    let toml: String = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omendb.toml");
    std::fs::write(&file, &toml).unwrap();
    let config = config_print(&["--config", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(config.storage.path, PathBuf::from("/data"));
    assert_eq!(config.server.admin_listen.port(), 9090);
    assert_eq!(config.server.listen.port(), 8080);
    // Kubernetes must wait longer than the server's drain.
    let statefulset = read("deploy/k8s/statefulset.yaml");
    let grace: u64 = statefulset
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(grace * 1000 > config.server.shutdown_grace_ms);
    for probe in [
        "path: /health/live",
        "path: /health/ready",
        "/etc/omendb/omendb.toml",
    ] {
        assert!(statefulset.contains(probe), "the StatefulSet lacks {probe}");
    }
}

#[test]
fn the_dockerfile_settings_are_valid_configuration() {
    let dockerfile = read("Dockerfile");
    let env: Vec<(String, String)> = dockerfile
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches("ENV ")
                .trim_end_matches('\\')
                .trim()
        })
        .filter(|l| l.starts_with("OMENDB_"))
        .map(|l| {
            let (name, value) = l.split_once('=').unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect();
    assert!(env.len() >= 3, "{env:?}");
    let config = config_print(&[], &env).unwrap();
    assert_eq!(config.storage.path, PathBuf::from("/data"));
    assert!(dockerfile.contains("http://127.0.0.1:9090/health/ready"));
    assert!(dockerfile.contains("USER omendb"));
}

/// `config print` shows the storage options' secrets as `<redacted>` (its output ends up in
/// terminals and tickets), the other options as set; and the backend's request timeout and
/// retries are settings like any other.
#[test]
fn config_print_redacts_secrets_and_takes_the_storage_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omendb.toml");
    std::fs::write(
        &file,
        "[storage]\nurl = \"s3://bucket/prefix\"\n\n[storage.options]\n\
         region = \"eu-west-1\"\naccess_key_id = \"AKIDEXAMPLE\"\n\
         secret_access_key = \"hunter2\"\nsession_token = \"tok-123\"\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_omendb"));
    command.args(["config", "print", "--config", file.to_str().unwrap()]);
    command.args([
        "--set",
        "storage.request_timeout_ms=600000",
        "--set",
        "storage.retries=2",
    ]);
    for (name, _) in std::env::vars() {
        if name.starts_with("OMENDB_") {
            command.env_remove(name);
        }
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("tok-123"),
        "{text}"
    );
    let config: omendb_server::Config = toml::from_str(&text).unwrap();
    let options = &config.storage.options;
    assert_eq!(options["secret_access_key"], "<redacted>");
    assert_eq!(options["session_token"], "<redacted>");
    assert_eq!(options["access_key_id"], "AKIDEXAMPLE");
    assert_eq!(options["region"], "eu-west-1");
    assert_eq!(config.storage.request_timeout_ms, 600_000);
    assert_eq!(config.storage.retries, 2);
    let debug = format!("{:?}", config.storage);
    assert!(debug.contains("AKIDEXAMPLE"), "{debug}");
    let loaded = omendb_server::Config::load(Some(&file), &[]).unwrap();
    let debug = format!("{loaded:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("<redacted>"),
        "{debug}"
    );
}
