//! How the admin API is exposed: the unix socket (the write path, mode 0600
//! in a directory only the daemon can write), the optional loopback TCP
//! listener (read-only unless a token is configured, Host header checked),
//! and the accept loop both share: a cap on open connections, a deadline
//! for each request's header (which also closes idle keep-alive
//! connections) and one for each whole request.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State as AxState};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::debug;

use super::ApiError;

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; the next waits in the kernel's backlog.
    pub max_connections: usize,
    /// Time to send a request's header, counted from the end of the last
    /// answer on a kept-alive connection (so it is the idle timeout too).
    pub header_timeout: Duration,
    /// Time from a request's header to the end of its answer (the body is
    /// read inside it).
    pub request_timeout: Duration,
}

impl Limits {
    /// The unix socket: the CLI, the CNI plugin, scripts.
    pub const UNIX: Limits = Limits {
        max_connections: 128,
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(60),
    };
    /// The loopback TCP listener: scrapers and dashboards. Its cap is its
    /// own, so a flood there leaves the unix socket usable.
    pub const TCP: Limits = Limits {
        max_connections: 32,
        header_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
    };
}

/// How long open connections get to finish when the server stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A socket path that cannot be used safely.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("the admin socket directory {dir} is a symlink; it is not followed (give --socket a path in a real directory)")]
    DirSymlink { dir: PathBuf },
    #[error("the admin socket directory {dir} is not a directory")]
    NotDir { dir: PathBuf },
    #[error("the admin socket directory {dir} belongs to uid {owner}, not to this daemon (uid {me}): whoever owns it could replace the socket")]
    DirOwner { dir: PathBuf, owner: u32, me: u32 },
    #[error("the admin socket directory {dir} is writable by group or others (mode {mode:04o}): anyone there could replace the socket; use a directory of its own (such as /run/vxmesh)")]
    DirWritable { dir: PathBuf, mode: u32 },
    #[error("{path} exists and is not a socket; not removing it")]
    NotSocket { path: PathBuf },
    #[error("another process serves on {path}; is vxmeshd already running?")]
    InUse { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_path_buf();
    move |source| SocketError::Io { what, path, source }
}

/// Binds the unix socket at `path`, mode 0600. Its directory is created
/// mode 0700 if missing; an existing one must be a real directory (not a
/// symlink) owned by this user and writable by no one else. A stale socket
/// left by a crash is replaced; anything else at the path, or a socket some
/// process still answers on, is refused.
pub fn bind_unix(path: &Path) -> Result<UnixListener, SocketError> {
    bind_unix_with(
        path,
        |p| std::os::unix::net::UnixStream::connect(p).is_ok(),
        |p| UnixListener::bind(p),
    )
}

/// [`bind_unix`]'s rules for any kind of unix socket: `live` tells whether
/// a socket already at the path is served (then it is left alone), `bind`
/// binds one.
pub fn bind_unix_with<T>(
    path: &Path,
    live: impl FnOnce(&Path) -> bool,
    bind: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<T, SocketError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(up).map_err(io_err("creating", up))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("creating the socket directory", &dir))?;
        }
        Err(e) => return Err(io_err("reading", &dir)(e)),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(io_err("reading", &dir))?;
    check_dir(&dir, &meta, nix::unistd::geteuid().as_raw())?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if live(path) {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io_err("removing the stale socket", path))?;
        }
        Ok(_) => {
            return Err(SocketError::NotSocket {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading", path)(e)),
    }
    // The umask makes the socket 0600 from the moment it exists (the chmod
    // after it is for file systems that ignore the umask on sockets).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = bind(path);
    nix::sys::stat::umask(old);
    let l = bound.map_err(io_err("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("setting the mode of", path))?;
    Ok(l)
}

/// The rules for the socket's directory (see [`bind_unix`]).
fn check_dir(dir: &Path, meta: &std::fs::Metadata, me: u32) -> Result<(), SocketError> {
    let dir = dir.to_path_buf();
    if meta.file_type().is_symlink() {
        return Err(SocketError::DirSymlink { dir });
    }
    if !meta.is_dir() {
        return Err(SocketError::NotDir { dir });
    }
    if meta.uid() != me {
        return Err(SocketError::DirOwner {
            dir,
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(SocketError::DirWritable { dir, mode });
    }
    Ok(())
}

/// Serves `router` on `listener` until `shutdown` resolves, within
/// `limits`; then stops accepting and gives open connections
/// [`STOP_GRACE`] to finish.
pub async fn serve<L: axum::serve::Listener>(
    mut listener: L,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_deadline,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (close_tx, close_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (io, _) = tokio::select! {
            c = listener.accept() => c,
            _ = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut close = close_rx.clone();
        conns.spawn(async move {
            let _slot = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "admin API connection ended");
                    }
                }
                _ = async { close.wait_for(|c| *c).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_GRACE, conn).await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = close_tx.send(true);
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_GRACE * 2, all).await.is_err() {
        conns.abort_all();
    }
    Ok(())
}

fn refuse(code: StatusCode, error: String) -> Response {
    (code, Json(ApiError { error })).into_response()
}

/// Ends a request that outlives the limit with 503 (a write may or may
/// not have been made).
async fn request_deadline(AxState(limit): AxState<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {limit:?} and was cut; a write it made may have been applied"),
        ),
    }
}

/// Who may do what on the loopback TCP listener.
#[derive(Clone)]
pub struct TcpAccess {
    /// The address it is bound to (for the Host check).
    pub addr: SocketAddr,
    /// Writes need `Authorization: Bearer <token>`; none: no writes.
    pub token: Option<Arc<str>>,
    /// The unix socket, named in refusals.
    pub socket: PathBuf,
}

/// Shortest token accepted from `--admin-token-file`.
pub const MIN_TOKEN_LEN: usize = 16;

/// Reads the admin token from `path`: one line of at least
/// [`MIN_TOKEN_LEN`] characters, in a file that neither group nor others
/// can read.
pub fn read_token(path: &Path) -> Result<Arc<str>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "admin token file {}: readable by group or others (mode {mode:04o}); chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "admin token file {}: expected one token of at least {MIN_TOKEN_LEN} characters, without spaces",
            path.display()
        ));
    }
    Ok(token.into())
}

/// Checks the TCP listener's options: loopback only, a token file only
/// with an address. The token, if any.
pub fn admin_token(
    addr: Option<SocketAddr>,
    token_file: Option<&Path>,
) -> Result<Option<Arc<str>>, String> {
    match (addr, token_file) {
        (Some(addr), _) if !addr.ip().is_loopback() => Err(format!(
            "the admin API listens on loopback only, not {addr}"
        )),
        (None, Some(f)) => Err(format!(
            "--admin-token-file {} is for the TCP listener: give --admin-addr too",
            f.display()
        )),
        (_, Some(f)) => read_token(f).map(Some),
        (_, None) => Ok(None),
    }
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TcpAccess {
    /// The names a request may give in `Host` (and `Origin`): the bound
    /// address, or `localhost`, with or without the port.
    fn host_ok(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let port = self.addr.port();
        let ip = match self.addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        [ip.as_str(), "localhost"]
            .iter()
            .any(|name| host == *name || host == format!("{name}:{port}"))
    }

    /// Why a request is refused, if it is.
    fn check(&self, req: &Request) -> Option<Response> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.host_ok(host) {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{host}` is not this listener: the admin API on {} answers only to {}, or localhost:{} (names that resolve here from elsewhere, as in DNS rebinding, are refused)",
                    self.addr, self.addr, self.addr.port()
                ),
            ));
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let o = origin.to_str().unwrap_or("");
            let bare = o.strip_prefix("http://").unwrap_or("\u{0}");
            if !self.host_ok(bare) {
                return Some(refuse(
                    StatusCode::FORBIDDEN,
                    format!("requests from web pages (Origin `{o}`) are refused"),
                ));
            }
        }
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            return None;
        }
        let Some(token) = &self.token else {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "the admin API on {} is read-only; make changes over the unix socket {} (vxmesh --socket), or start vxmeshd with --admin-token-file FILE and send `Authorization: Bearer <token>`",
                    self.addr,
                    self.socket.display()
                ),
            ));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if same(given.trim().as_bytes(), token.as_bytes()) {
            return None;
        }
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            format!(
                "writes on {} need `Authorization: Bearer <token>` with the token in vxmeshd's --admin-token-file",
                self.addr
            ),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }
}

/// The middleware that applies a [`TcpAccess`].
pub async fn tcp_guard(
    AxState(access): AxState<Arc<TcpAccess>>,
    req: Request,
    next: Next,
) -> Response {
    match access.check(&req) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

#[cfg(test)]
#[path = "listen_tests.rs"]
mod tests;
