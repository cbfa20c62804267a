//! `fishctl backup -o FILE`: saves `GET /api/v1/backup` (admin).
//!
//! The file is written beside its final name and renamed into place only once the
//! stream ended with the backup's end line, so an interrupted transfer never leaves a
//! file that looks like a backup.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::{Env, shown};

/// Streams the backup into `output` (or stdout for `-`).
pub async fn run(env: &Env, output: &Path) -> Result<()> {
    let client = env.client()?;
    let mut stream = client.backup().await?;
    let to_stdout = output.as_os_str() == "-";
    let tmp = output.with_file_name(format!(
        ".{}.partial",
        output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into())
    ));
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", shown(&tmp)))?,
        ))
    };
    // The last line seen, to check the end line at the end.
    let mut tail: Vec<u8> = Vec::new();
    let mut bytes = 0usize;
    let result: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            bytes += chunk.len();
            sink.write_all(&chunk).context("cannot write the backup")?;
            tail.extend_from_slice(&chunk);
            if let Some(pos) = tail[..tail.len().saturating_sub(1)].iter().rposition(|b| *b == b'\n') {
                tail.drain(..=pos);
            }
        }
        sink.flush().context("cannot write the backup")?;
        if !tail.starts_with(b"{\"end\"") {
            bail!("the backup stream ended early ({bytes} bytes, no end line); nothing was saved");
        }
        Ok(())
    }
    .await;
    drop(sink);
    if let Err(e) = result {
        if !to_stdout {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(e);
    }
    if !to_stdout {
        std::fs::rename(&tmp, output).with_context(|| format!("cannot write {}", shown(output)))?;
        eprintln!("backup saved to {} ({bytes} bytes)", shown(output));
    }
    Ok(())
}
