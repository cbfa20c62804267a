//! fishd: the Aquarium daemon of one node.
//!
//! Layers, pointing inward: `api` (HTTP) and `reconcile` (control loops) both use the
//! `store`; `api` → `auth` → `store`; only `reconcile` calls `drivers`; only
//! [`runtime`] wires them together. The allowed arrows are a table in `layering.rs`,
//! which a test checks against every `crate::` path in the sources.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod defaults;
pub mod drivers;
pub mod errors;
pub mod fsutil;
pub mod gates;
mod layering;
pub mod listener;
pub mod logs;
pub mod meta_token;
pub mod metadata;
pub mod proxy;
pub mod ratelimit;
pub mod reconcile;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod tls;
