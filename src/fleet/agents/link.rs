//! One agent connection's socket, on either end: text frames out of one
//! channel onto the socket, text frames off the socket into another, a
//! WebSocket ping every heartbeat, and an end when the other side has been
//! silent for [`SILENT_HEARTBEATS`] heartbeats (a peer behind a dead NAT
//! mapping sends no FIN). The gateway's door and the agent's dialer both
//! run their socket through [`pump`].

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::frame::MAX_FRAME;

/// Heartbeats a peer may miss before its connection counts as dead.
pub const SILENT_HEARTBEATS: u32 = 3;

/// Frames queued toward one socket before senders wait.
pub const QUEUE: usize = 256;

/// The socket's framing limits: one frame, one message.
pub async fn websocket<S>(stream: S, role: Role) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    WebSocketStream::from_raw_socket(stream, role, Some(config)).await
}

/// Moves frames between the socket and the two channels until one side
/// ends; returns why it ended, for logs and status.
pub async fn pump<S>(
    socket: WebSocketStream<S>,
    mut outgoing: mpsc::Receiver<String>,
    incoming: mpsc::Sender<String>,
    heartbeat: Duration,
    cancel: CancellationToken,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sink, mut stream) = socket.split();
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let silence = heartbeat * SILENT_HEARTBEATS;
    let why = loop {
        tokio::select! {
            _ = cancel.cancelled() => break "shut down".to_string(),
            out = outgoing.recv() => match out {
                None => break "closed by this side".to_string(),
                Some(text) => {
                    if let Err(error) = sink.send(Message::text(text)).await {
                        break format!("sending failed: {error}");
                    }
                }
            },
            read = stream.next() => {
                last_heard = Instant::now();
                match read {
                    None => break "the connection closed".to_string(),
                    Some(Err(error)) => break format!("the connection failed: {error}"),
                    Some(Ok(Message::Text(text))) => {
                        if incoming.send(text.to_string()).await.is_err() {
                            break "closed by this side".to_string();
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break match frame {
                            Some(frame) if !frame.reason.is_empty() => format!("the other side closed the connection: {}", frame.reason),
                            _ => "the other side closed the connection".to_string(),
                        };
                    }
                    // Pings are answered by the framing itself; pongs only prove life.
                    Some(Ok(_)) => {}
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > silence {
                    break format!("no heartbeat for {}s", silence.as_secs());
                }
                if let Err(error) = sink.send(Message::Ping(Default::default())).await {
                    break format!("sending a heartbeat failed: {error}");
                }
            }
        }
    };
    let _ = sink.close().await;
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (
            websocket(a, Role::Client).await,
            websocket(b, Role::Server).await,
        )
    }

    #[tokio::test]
    async fn frames_cross_in_both_directions_and_a_close_is_seen() {
        let (client, server) = pair().await;
        let (to_client_tx, to_client_rx) = mpsc::channel(4);
        let (from_client_tx, mut from_client_rx) = mpsc::channel(4);
        let (to_server_tx, to_server_rx) = mpsc::channel(4);
        let (from_server_tx, mut from_server_rx) = mpsc::channel(4);
        let beat = Duration::from_secs(5);
        let client_cancel = CancellationToken::new();
        let client = tokio::spawn(pump(
            client,
            to_server_rx,
            from_server_tx,
            beat,
            client_cancel.clone(),
        ));
        let server = tokio::spawn(pump(
            server,
            to_client_rx,
            from_client_tx,
            beat,
            CancellationToken::new(),
        ));
        to_server_tx.send("up".into()).await.expect("queued");
        assert_eq!(from_client_rx.recv().await.as_deref(), Some("up"));
        to_client_tx.send("down".into()).await.expect("queued");
        assert_eq!(from_server_rx.recv().await.as_deref(), Some("down"));
        client_cancel.cancel();
        assert_eq!(client.await.expect("client ends"), "shut down");
        let why = server.await.expect("server ends");
        assert!(why.contains("closed"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_after_missed_heartbeats() {
        let (client, _silent) = pair().await;
        let (_out_tx, out_rx) = mpsc::channel(1);
        let (in_tx, _in_rx) = mpsc::channel(1);
        // The other end is never read: no pong ever comes back.
        let why = pump(
            client,
            out_rx,
            in_tx,
            Duration::from_secs(10),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(why, "no heartbeat for 30s");
    }
}
