//! End-to-end tests: real fishd processes over real HTTPS, and the fishctl binary.
//! One test binary, so the workspace links it once.

mod core;
mod fishctl;
mod lifecycle;
mod process;
