#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! `docs/operations.md` documents every configuration key and every metric the server exports.

use omendb_server::Config;
use omendb_server::telemetry::METRICS;

fn operations() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap()
}

/// Every `section.key` of the configuration.
fn keys() -> Vec<String> {
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = Vec::new();
    for (section, table) in value.as_table().unwrap() {
        for key in table.as_table().unwrap().keys() {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn every_configuration_key_is_documented() {
    let docs = operations();
    let keys = keys();
    assert!(keys.len() >= 20, "{keys:?}");
    for key in keys {
        assert!(
            docs.contains(&format!("| `{key}` |")),
            "docs/operations.md lacks the key {key}"
        );
    }
}

#[test]
fn every_metric_is_documented() {
    let docs = operations();
    for (name, _, _) in METRICS {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/operations.md lacks the metric {name}"
        );
    }
}
