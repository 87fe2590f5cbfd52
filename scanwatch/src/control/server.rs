//! The agent side of the control socket. Connections are served by their own tasks; each request
//! is handed to the agent's loop as an [`Incoming`] (the loop owns the state) and the answer is
//! written back. Only root peers are served: the socket is mode 0600 and every connection's
//! `SO_PEERCRED` uid is checked, so a socket file made world-writable by mistake still refuses.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::{Request, Response, MAX_REQUEST};

/// A request waiting for the agent's loop.
pub struct Incoming {
    pub req: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Removes the socket file when the agent stops.
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bind the socket at `path` (mode 0600; parent created 0700 if missing). A live socket of
/// another agent is not taken over; a stale file is replaced.
pub fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketGuard)> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another running agent", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((l, SocketGuard(path.to_path_buf())))
}

/// Accept connections until the loop's receiver is gone.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Incoming>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, tx).await {
                        log::debug!("control connection: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("scanwatch: WARNING control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

async fn write_line(w: &mut (impl AsyncWriteExt + Unpin), r: &Response) -> std::io::Result<()> {
    let mut s = serde_json::to_string(r).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (rd, mut wr) = stream.into_split();
    if cred.uid() != 0 {
        eprintln!(
            "scanwatch: WARNING control socket: refused uid {} (pid {:?}): only root may connect",
            cred.uid(),
            cred.pid()
        );
        return write_line(&mut wr, &Response::error(format!("permission denied: uid {} is not root", cred.uid()))).await;
    }
    let mut lines = BufReader::new(rd.take(1 << 20)).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_REQUEST {
            return write_line(&mut wr, &Response::error(format!("request longer than {MAX_REQUEST} bytes"))).await;
        }
        let resp = match super::parse_request(line.as_bytes()) {
            Err(e) => Response::error(e),
            Ok(req) => {
                let (reply, rx) = oneshot::channel();
                if tx.send(Incoming { req, reply }).await.is_err() {
                    return write_line(&mut wr, &Response::error("the agent is stopping")).await;
                }
                rx.await.unwrap_or_else(|_| Response::error("the agent is stopping"))
            }
        };
        write_line(&mut wr, &resp).await?;
    }
    Ok(())
}
