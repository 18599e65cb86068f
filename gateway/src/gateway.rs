//! The whole gateway, assembled: the runtime (data plane and control), the
//! hypercare call store and engine, the admin API and the demo upstreams.
//!
//! Start-up order: the call store is opened and the runtime overrides it
//! saved are read; the runtime binds every socket and starts the record
//! writer and the shards (which serve with those overrides from their first
//! request); then the hypercare engine, the demo upstreams and the admin
//! listener start on the runtime's [`Controller`].

use crate::config::{self, Config};
use hypergate_core::config::overrides::Overrides;
use hypergate_runtime::gateway::{Hooks, SaveOverrides};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use hypergate_runtime::gateway::{Controller, OverrideError, ReloadError};

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The runtime could not start (a socket that cannot be bound, say).
    #[error(transparent)]
    Runtime(#[from] hypergate_runtime::gateway::StartError),
    /// The call store could not be opened.
    #[error("cannot open the call store {0}: {1}")]
    Store(String, rusqlite::Error),
    /// A demo upstream could not start.
    #[error("cannot start the demo upstream on {address}: {source}")]
    Demo {
        /// Its configured address.
        address: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Any other I/O failure while starting (a thread that cannot be spawned).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A started gateway.
pub struct Gateway {
    /// Control state: reloads, overrides, stats, drains.
    pub controller: Arc<Controller>,
    /// Resolved data-plane addresses, by listener.
    pub listener_addrs: Vec<(String, SocketAddr)>,
    /// Resolved admin address.
    pub admin_addr: SocketAddr,
    runtime: hypergate_runtime::gateway::Gateway,
}

impl Gateway {
    /// Starts everything for `config`; `config_path` is what reloads re-read.
    pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Gateway, StartError> {
        let store_config = &config.raw.hypercare.store;
        let store_path = store_config
            .enabled
            .then(|| crate::hypercare::store::resolve_path(store_config, config_path.as_deref()));
        // Runtime overrides saved by an earlier process (a canary's rollback, an
        // operator's weights) apply before the listeners serve.
        let overrides: Overrides = store_path
            .as_deref()
            .map(crate::hypercare::state::load_overrides)
            .unwrap_or_default();
        if !overrides.weights.is_empty() {
            tracing::info!(
                overrides = overrides.weights.len(),
                "runtime overrides restored from the call store"
            );
        }
        let store = match &store_path {
            Some(path) => {
                let store = crate::hypercare::store::CallStore::open(path, store_config.clone())
                    .map_err(|e| StartError::Store(path.display().to_string(), e))?;
                tracing::info!(path = %path.display(), "call store open");
                Some(store)
            }
            None => None,
        };
        let store_counters = store.as_ref().map(|s| s.counters.clone());
        let save_overrides = store_path.clone().map(|path| {
            Box::new(move |o: &Overrides| crate::hypercare::state::save_overrides(&path, o))
                as SaveOverrides
        });
        let demos = config.raw.demo_upstreams.clone();
        let hooks = Hooks {
            config_path,
            loader: Box::new(config::load_file),
            overrides,
            save_overrides,
            store: store.map(|s| Box::new(s) as Box<dyn hypergate_core::record::RecordStore>),
            store_path,
        };
        let mut runtime = hypergate_runtime::gateway::Gateway::start(config, hooks)?;
        let controller = runtime.controller.clone();
        let view = crate::hypercare::engine::SharedView::default();
        let control: Arc<dyn hypergate_runtime::control::Control> = controller.clone();
        let fleet = match crate::hypercare::fleet::FleetSettings::of(
            &controller.config().raw,
            runtime.admin_addr.port(),
        ) {
            Some(settings) => Some(crate::hypercare::fleet::Fleet::start(
                settings,
                Arc::downgrade(&control),
            )?),
            None => None,
        };
        crate::hypercare::engine::start(Arc::downgrade(&control), view.clone(), fleet.clone())?;
        for d in &demos {
            crate::demo::start(d).map_err(|source| StartError::Demo {
                address: d.address.clone(),
                source,
            })?;
        }
        let admin_addr = runtime.admin_addr;
        if let Some(listener) = runtime.admin_listener.take() {
            crate::admin::start(
                listener,
                controller.clone(),
                crate::admin::Hypercare {
                    view,
                    store_counters,
                    fleet,
                },
            )?;
            tracing::info!(%admin_addr, "admin listening");
        }
        Ok(Gateway {
            controller,
            listener_addrs: runtime.listener_addrs.clone(),
            admin_addr,
            runtime,
        })
    }

    /// Drains at once (no lame-duck period) and waits for every shard to finish
    /// (and the record writer to flush).
    pub fn shutdown(self) {
        self.runtime.shutdown();
    }

    /// Waits for the shards to exit (after a drain started elsewhere).
    pub fn wait(self) {
        self.runtime.wait();
    }
}
