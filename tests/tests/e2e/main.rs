//! End-to-end tests: real fishd processes over real HTTPS, and the fishctl binary.
//! One test binary, so the workspace links it once.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap fails with the value it saw

mod chaos;
mod cluster;
mod core;
mod dashboard;
mod docker;
mod election;
mod firsthour;
mod fishctl;
mod gates;
mod hardening;
mod join;
mod lifecycle;
mod node_loss;
mod operations;
mod partition;
mod process;
mod qemu;
mod sandbox;
