//! The accept loop: one hyper HTTP/1 connection per client, with a deadline on the request's
//! head. axum's own `serve` installs no timer, and without one hyper's header timeout never
//! fires: a client that trickles header bytes (slowloris) would hold its connection and task
//! forever. Here the head must arrive within the same limit as the body (`--body-timeout`);
//! the connection is closed otherwise.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets every open
/// connection finish the request it is on, and returns when they are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    head_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(head_timeout);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors or the like: the clients already connected are
                    // served meanwhile; retrying at once would only spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Answers are one write each; Nagle's delay would only add latency.
                let _ = stream.set_nodelay(true);
                let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let connection = connections.watch(connection);
                tokio::spawn(async move {
                    // A client that goes away or times out ends only its own connection.
                    let _ = connection.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    connections.shutdown().await;
}
