//! Realtime sockets to a provider: the WebSocket of its speech recogniser,
//! opened with the provider's key over its own TLS settings, carrying whole
//! binary messages ([`frame`]s) each way.

pub mod frame;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::header::HeaderMap;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::error::{ProviderError, UpstreamError};
use super::upstream::Io;

/// The largest message either side of a realtime session may send: an audio
/// frame is a few hundred milliseconds of sound, an answer a few sentences.
pub const MAX_MESSAGE: usize = 1 << 20;

/// A provider's side of a realtime session.
pub struct ProviderSocket {
    socket: WebSocketStream<Box<dyn Io>>,
}

impl ProviderSocket {
    /// The WebSocket handshake for `url` (`ws://` or `wss://`) over `stream`,
    /// sending `headers` (the provider's key among them). A refusal keeps its
    /// status and `Retry-After`, so it fails over as a refused chat call does.
    pub async fn open(
        stream: Box<dyn Io>,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<ProviderSocket, UpstreamError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| UpstreamError::Connect(format!("not a socket address: {e}")))?;
        for (name, value) in headers {
            request.headers_mut().insert(name, value.clone());
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _)) => Ok(ProviderSocket { socket }),
            Err(WsError::Http(response)) => Err(UpstreamError::Status {
                status: response.status().as_u16(),
                retry_after: super::openai::retry_after(response.headers()),
                detail: response
                    .body()
                    .as_deref()
                    .map(ProviderError::from_body)
                    .unwrap_or_default(),
            }),
            Err(error) => Err(UpstreamError::Connect(format!("socket handshake: {error}"))),
        }
    }

    pub async fn send(&mut self, message: Bytes) -> Result<(), UpstreamError> {
        self.socket
            .send(Message::Binary(message))
            .await
            .map_err(|e| UpstreamError::Interrupted(e.to_string()))
    }

    /// The next binary message; `None` once the provider has closed. Pings are
    /// answered as they are read; a text message is a protocol error.
    pub async fn next(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        loop {
            return match self.socket.next().await? {
                Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                Ok(Message::Close(_)) => None,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Text(_)) => Some(Err(UpstreamError::Protocol(
                    "a text message where frames are binary".to_owned(),
                ))),
                Err(error) => Some(Err(UpstreamError::Interrupted(error.to_string()))),
            };
        }
    }

    /// Closes the socket, waiting briefly for the provider's close in reply.
    pub async fn close(mut self) {
        let closing = async {
            let _ = self.socket.close(None).await;
            while let Some(Ok(_)) = self.socket.next().await {}
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), closing).await;
    }
}
