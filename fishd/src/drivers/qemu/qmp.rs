//! A small QMP client: JSON lines over the machine's unix socket.
//!
//! QMP greets with `{"QMP": ...}`, wants `qmp_capabilities` before anything else, then
//! answers each `{"execute": ...}` with one `{"return": ...}` or `{"error": ...}` line,
//! with asynchronous `{"event": ...}` lines in between (skipped here). The driver needs
//! three commands (`query-status`, `system_powerdown`, `quit`), so this is owned code
//! rather than the `qapi` crate, whose generated schema crate is a large build for that
//! (see the reference's crate notes). QEMU serves one QMP client at a time: every use
//! is a short connection, under a deadline, so a stuck machine never stalls fishd.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// The longest line accepted: answers of the commands used here are a few hundred bytes.
const MAX_LINE: u64 = 1 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket is not there or nobody listens: QEMU is gone or still starting.
    #[error("cannot connect to QMP at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP did not answer within {0:?}")]
    Timeout(Duration),
}

/// One negotiated QMP session.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect { path: path.display().to_string(), source })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(read), writer };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("expected a QMP greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// Runs `command` without arguments; its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = serde_json::to_vec(&json!({ "execute": command }))
            .map_err(|e| QmpError::Protocol(format!("cannot encode {command}: {e}")))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        loop {
            let msg = self.read_message().await?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            // An event (SHUTDOWN, POWERDOWN...): not the answer.
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader).take(MAX_LINE).read_line(&mut line).await?;
        if n == 0 {
            return Err(QmpError::Protocol("QEMU closed the QMP connection".into()));
        }
        serde_json::from_str(line.trim()).map_err(|e| QmpError::Protocol(format!("not JSON ({e}): {line:.200}")))
    }
}

/// Connects and runs one command, all within `timeout`.
pub async fn run(path: &Path, command: &str, timeout: Duration) -> Result<Value, QmpError> {
    tokio::time::timeout(timeout, async {
        let mut qmp = Qmp::connect(path).await?;
        qmp.execute(command).await
    })
    .await
    .map_err(|_| QmpError::Timeout(timeout))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A QMP server speaking the protocol the way QEMU does, events included.
    async fn fake_qemu(listener: UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.unwrap();
        while let Some(line) = lines.next_line().await.unwrap() {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let answer = match cmd["execute"].as_str().unwrap() {
                "qmp_capabilities" => "{\"return\": {}}\n".to_owned(),
                "query-status" => {
                    "{\"event\": \"POWERDOWN\", \"data\": {}}\n{\"return\": {\"status\": \"shutdown\", \"running\": false}}\n"
                        .to_owned()
                }
                other => format!("{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"no {other}\"}}}}\n"),
            };
            write.write_all(answer.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn speaks_qmp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        tokio::spawn(fake_qemu(UnixListener::bind(&path).unwrap()));
        let mut qmp = tokio::time::timeout(Duration::from_secs(5), Qmp::connect(&path)).await.unwrap().unwrap();
        let status = qmp.execute("query-status").await.unwrap();
        assert_eq!(status["status"], "shutdown");
        let err = qmp.execute("nope").await.unwrap_err();
        assert!(err.to_string().contains("CommandNotFound"), "{err}");
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(&dir.path().join("none.sock"), "query-status", Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    }
}
