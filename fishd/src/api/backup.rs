//! `GET /api/v1/backup` (admin): a consistent snapshot of the store, streamed.
//!
//! The dump runs on a blocking thread over one redb read transaction (see
//! [`crate::store::backup`]) and hands chunks to the response through a small bounded
//! channel: the node keeps serving and writing meanwhile, memory stays bounded by the
//! channel, and a client that goes away stops the dump at its next chunk.

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use tokio::sync::mpsc;

use super::error::ApiResult;
use super::{AppState, audit};
use crate::auth::AuthUser;

/// Bytes gathered before a chunk is sent: big enough that channel overhead is noise.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the dump thread and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A `Write` that sends full chunks into a channel; fails once the receiver is gone.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A backup of the whole store (admin): JSON lines, a header, one line per table
/// entry and an end line with the entry count and SHA-256 (see `fishd restore`).
#[utoipa::path(
    get, path = "/api/v1/backup", tag = "operations",
    responses((status = 200, body = String, content_type = "application/x-ndjson",
        description = "the backup, streamed; it ends with an `end` line, without which it is incomplete"),
        (status = 403, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn backup(State(state): State<AppState>, user: AuthUser) -> ApiResult<Response> {
    user.require_admin("take backups")?;
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let store = state.store.clone();
    let who = user.clone();
    tokio::task::spawn_blocking(move || {
        let errors = tx.clone();
        let mut w = ChannelWriter { buf: Vec::with_capacity(CHUNK), tx };
        match store.backup(&mut w) {
            Ok(sum) => {
                tracing::info!(revision = sum.revision, entries = sum.entries, "backup streamed");
                audit(&who, "backup", "Store", "", "streamed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup stopped");
                // The body ends with an error, so the client sees a broken transfer,
                // never a short file that looks whole (the end line is missing too).
                let _ = errors.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(resp)
}
