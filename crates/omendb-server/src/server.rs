//! The server's life: bind both listeners, open the database (requests get 503 `not_ready`
//! meanwhile), serve, and on a shutdown signal drain within a bound, sync the WAL and close.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use omendb_core::{BackendOptions, Db, Durability, ReadCompaction};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, DurabilityConfig};
use crate::connection::Connections;
use crate::slow_log::SlowLog;
use crate::state::State;
use crate::{admin, api, telemetry};

/// A server whose listeners are bound.
pub struct Server {
    state: Arc<State>,
    api: TcpListener,
    admin: TcpListener,
}

impl Server {
    /// Binds the client and admin listeners of `config` (port 0 picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        // Installed before any layer records, so no early metric is lost.
        let _ = telemetry::recorder();
        let api = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .with_context(|| {
                format!("binding server.admin_listen {}", config.server.admin_listen)
            })?;
        let slow_log = SlowLog::open(&config.log).with_context(|| {
            format!(
                "opening log.slow_query_file {}",
                config.log.slow_query_file.display()
            )
        })?;
        Ok(Server {
            state: Arc::new(State::new(config, slow_log)),
            api,
            admin,
        })
    }

    /// The client API's address.
    pub fn api_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.api.local_addr()?)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.admin.local_addr()?)
    }

    /// Serves until `shutdown` completes, then drains: new requests get 503, in-flight ones
    /// have `server.shutdown_grace_ms` to finish before they are cancelled, the WAL is synced
    /// and the database closed. An error opening the database ends the run with it.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server { state, api, admin } = self;
        let config = state.config.clone();
        for (what, addr) in [
            ("client API", config.server.listen),
            ("admin", config.server.admin_listen),
        ] {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the {what} listener is not on loopback and has no authentication yet");
            }
        }
        tracing::info!(
            api = %api.local_addr()?, admin = %admin.local_addr()?,
            "listening (loopback by default; this version has no authentication)"
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn({
            let router = admin::router(Arc::clone(&state));
            let mut stop = stop_rx.clone();
            async move {
                axum::serve(admin, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }
        });
        let api_task = tokio::spawn({
            let router = api::router(Arc::clone(&state));
            let api = Connections::new(
                api,
                state.connection_slots(),
                Duration::from_millis(config.server.idle_timeout_ms),
            );
            let state = Arc::clone(&state);
            let mut stop = stop_rx.clone();
            async move {
                axum::serve(api, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                        state.start_draining();
                    })
                    .await
            }
        });

        let mut shutdown = std::pin::pin!(shutdown);
        let opened = tokio::select! {
            db = open(&config) => Some(db),
            () = &mut shutdown => None,
        };
        let result = match opened {
            Some(Ok(db)) => {
                tracing::info!(
                    tables = db.list_tables().len(),
                    "the database is open; ready"
                );
                state.set_db(db.clone());
                let checks = tokio::spawn(check_storage(db, Arc::clone(&state)));
                shutdown.await;
                checks.abort();
                Ok(())
            }
            Some(Err(err)) => Err(err),
            None => Ok(()),
        };

        tracing::info!("shutting down: draining requests");
        state.start_draining();
        let _ = stop_tx.send(true);
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let drained_by = tokio::time::Instant::now() + grace;
        let served = drain(api_task, drained_by, "client API").await;
        if matches!(served, Ok(false)) {
            // A request still running keeps its connection's task and gets `Closed` (503)
            // once the database closes under it.
            tracing::warn!(
                ?grace,
                "requests still running after the grace period fail as the database closes"
            );
        }
        // Closed however the API ended: closing syncs the WAL, which holds acknowledged
        // `Buffered` writes.
        if let Some(db) = state.open_db() {
            db.close().await.context("closing the database")?;
            tracing::info!("the database is closed");
        }
        // The admin listener drains with the API, by the same deadline: a request still
        // running there (a profile of up to a minute) does not hold the exit.
        let admin_served = drain(admin_task, drained_by, "admin listener").await;
        served?;
        admin_served?;
        result
    }
}

/// Waits until `by` for a listener's task to drain; one still serving then is aborted (it
/// stops accepting; its running requests keep their connections' tasks). `Ok(false)` if cut.
async fn drain(
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    by: tokio::time::Instant,
    name: &str,
) -> anyhow::Result<bool> {
    let abort = task.abort_handle();
    match tokio::time::timeout_at(by, task).await {
        Ok(joined) => {
            joined
                .with_context(|| format!("the {name} task failed"))?
                .with_context(|| format!("the {name} failed"))?;
            Ok(true)
        }
        Err(_) => {
            abort.abort();
            Ok(false)
        }
    }
}

/// Checks every `server.storage_check_ms` that the storage answers, for readiness: a backend
/// that stopped answering makes `/health/ready` 503 before requests start failing on it.
async fn check_storage(db: Db, state: Arc<State>) {
    let every = Duration::from_millis(state.config.server.storage_check_ms);
    loop {
        let outcome =
            match tokio::time::timeout(every.max(Duration::from_secs(1)), db.check_storage()).await
            {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some("the check timed out".to_owned()),
            };
        if outcome.is_some() != state.storage_error().is_some() {
            match &outcome {
                Some(error) => tracing::warn!(%error, "storage does not answer; not ready"),
                None => tracing::info!("storage answers again; ready"),
            }
        }
        state.set_storage_error(outcome);
        tokio::time::sleep(every).await;
    }
}

/// Opens the database `config` describes.
async fn open(config: &Config) -> anyhow::Result<Db> {
    let storage = &config.storage;
    let mut builder = Db::builder()
        .memtable_bytes(config.engine.memtable_mb << 20)
        .cache_bytes(config.engine.cache_mb << 20)
        .compaction_trigger(config.engine.compaction_trigger)
        .read_compaction(match config.engine.read_compaction_mib_per_s {
            0 => None,
            mib => Some(ReadCompaction {
                rewrite_bytes_per_second: mib.saturating_mul(1 << 20),
                ..ReadCompaction::default()
            }),
        })
        .idle_compaction(match config.engine.idle_compaction_s {
            0 => None,
            seconds => Some(std::time::Duration::from_secs(seconds)),
        })
        .durability(match config.engine.durability {
            DurabilityConfig::Durable => Durability::Durable,
            DurabilityConfig::Buffered => Durability::Buffered,
        });
    if storage.url.is_empty() {
        builder = builder.path(&storage.path);
    } else {
        let mut options = BackendOptions::default();
        options.options = storage.options.clone();
        options.request_timeout = match storage.request_timeout_ms {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        };
        options.retry.max_retries = storage.retries;
        builder = builder.url(&storage.url).backend_options(options);
        builder = if storage.wal_in_store {
            builder.wal_in_store()
        } else {
            builder.path(&storage.path)
        };
    }
    builder.build().await.context("opening the database")
}
