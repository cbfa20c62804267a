//! fishd: the Aquarium daemon of one node.
//!
//! Layers, pointing inward: `api` (HTTP) and `reconcile` (control loops) both use the
//! `store`; only `reconcile` calls `drivers`; only [`runtime`] wires them together.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod drivers;
pub mod fsutil;
pub mod gates;
pub mod logs;
pub mod meta_token;
pub mod metadata;
pub mod proxy;
pub mod reconcile;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod tls;
