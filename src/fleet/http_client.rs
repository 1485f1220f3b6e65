//! The HTTP client the gateway uses towards Streamable HTTP upstreams: rmcp's
//! reqwest client, with TCP_NODELAY set, wrapped to teach rmcp one quirk of
//! real servers. An unknown or expired session comes back as 404 from some
//! (which rmcp already recovers from) and as 400 from others (the TypeScript
//! SDK's examples, `server-everything`); the wrapper turns the latter into
//! rmcp's `SessionExpired`, so the transport re-initializes and retries once.
//!
//! A per-user session carries a [`CredentialRef`]: every request gets that
//! user's current bearer token, and a 401 asks the credential for a fresh one
//! (a re-exchange) and retries once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, JsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::{Error as SseError, Sse};

use super::credential::CredentialRef;
use crate::api::SecretValue;

/// The session id rmcp's transport uses with one upstream, as last seen
/// (the relay's wire sends on the same session).
pub type SessionSlot = Arc<std::sync::Mutex<Option<Arc<str>>>>;

/// Idle keep-alive connections kept per upstream host (host and port).
/// Calls in flight use as many connections as they need; once answered, at
/// most this many stay open for the next calls, the rest close. Without a
/// bound, a burst (every upstream connecting at start, a spike of calls)
/// left a connection with its buffers open per request of the burst for
/// the idle timeout: with 500 servers behind one host, about 1,000
/// connections and 60 KB per server.
pub const IDLE_CONNECTIONS_PER_HOST: usize = 32;

/// Builds the shared reqwest client for upstream traffic.
pub fn build_reqwest() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        .connect_timeout(Duration::from_secs(10))
        // The downstream's Host comes from its URL, never from a client.
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// rmcp's reqwest client plus the 400-means-expired-session rule and,
/// for per-user sessions, the user's bearer token.
#[derive(Clone)]
pub struct UpstreamHttpClient {
    inner: reqwest::Client,
    credential: Option<CredentialRef>,
    /// The session id rmcp last used, for the relay's own requests.
    session: SessionSlot,
}

type PostResult = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>;

impl UpstreamHttpClient {
    pub fn new(
        inner: reqwest::Client,
        credential: Option<CredentialRef>,
        session: SessionSlot,
    ) -> Self {
        Self {
            inner,
            credential,
            session,
        }
    }

    fn note_session(&self, session_id: &Option<Arc<str>>) {
        if let Some(id) = session_id
            && let Ok(mut known) = self.session.lock()
            && known.as_ref() != Some(id)
        {
            *known = Some(id.clone());
        }
    }

    /// The header to send: the credential's token, else what rmcp passed.
    async fn token(
        &self,
        given: Option<String>,
    ) -> Result<(Option<String>, Option<SecretValue>), StreamableHttpError<reqwest::Error>> {
        match &self.credential {
            None => Ok((given, None)),
            Some(credential) => {
                let token = credential.bearer().await.map_err(sso_failure)?;
                Ok((Some(token.expose().to_string()), Some(token)))
            }
        }
    }

    /// Sends with the current token; on a 401, once more with a fresh one.
    async fn post_with_credential<F, Fut>(&self, auth_header: Option<String>, send: F) -> PostResult
    where
        F: Fn(Option<String>) -> Fut,
        Fut: Future<Output = PostResult>,
    {
        let (header, token) = self.token(auth_header).await?;
        let result = send(header).await;
        match (&self.credential, token) {
            (Some(credential), Some(token)) if is_unauthorized(&result) => {
                let fresh = credential
                    .after_rejection(&token)
                    .await
                    .map_err(sso_failure)?;
                send(Some(fresh.expose().to_string())).await
            }
            _ => result,
        }
    }
}

fn sso_failure(error: super::credential::CredentialError) -> StreamableHttpError<reqwest::Error> {
    StreamableHttpError::UnexpectedServerResponse(format!("SSO: {error}").into())
}

/// True when the server refused the request's credentials (HTTP 401).
fn is_unauthorized<E: std::error::Error + Send + Sync + 'static>(
    result: &Result<StreamableHttpPostResponse, StreamableHttpError<E>>,
) -> bool {
    match result {
        Err(StreamableHttpError::AuthRequired(_)) => true,
        Err(StreamableHttpError::UnexpectedServerResponse(text)) => text.contains("401"),
        _ => false,
    }
}

/// True when a transport-level rejection of a request that carried a session
/// id says the session is unknown. Only id-less JSON-RPC errors count: an
/// error with the request's own id is the server's answer to that request.
fn is_session_rejection<E: std::error::Error + Send + Sync + 'static>(
    result: &Result<StreamableHttpPostResponse, StreamableHttpError<E>>,
) -> bool {
    let mentions_session = |text: &str| text.to_ascii_lowercase().contains("session");
    match result {
        Ok(StreamableHttpPostResponse::Json(JsonRpcMessage::Error(error), _)) => {
            error.id.is_none() && mentions_session(&error.error.message)
        }
        Err(StreamableHttpError::UnexpectedServerResponse(text)) => {
            text.starts_with("HTTP 400") && mentions_session(text)
        }
        _ => false,
    }
}

impl StreamableHttpClient for UpstreamHttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let had_session = session_id.is_some();
        self.note_session(&session_id);
        let result = self
            .post_with_credential(auth_header, |header| {
                self.inner.post_message(
                    uri.clone(),
                    message.clone(),
                    session_id.clone(),
                    header,
                    custom_headers.clone(),
                )
            })
            .await;
        if had_session && is_session_rejection(&result) {
            return Err(StreamableHttpError::SessionExpired);
        }
        result
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let had_session = session_id.is_some();
        self.note_session(&session_id);
        let result = self
            .post_with_credential(auth_header, |header| {
                self.inner.post_message_with_max_sse_event_size(
                    uri.clone(),
                    message.clone(),
                    session_id.clone(),
                    header,
                    custom_headers.clone(),
                    max_sse_event_size,
                )
            })
            .await;
        if had_session && is_session_rejection(&result) {
            return Err(StreamableHttpError::SessionExpired);
        }
        result
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        let (header, _) = self.token(auth_header).await?;
        self.inner
            .delete_session(uri, session_id, header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let (header, _) = self.token(auth_header).await?;
        self.inner
            .get_stream(uri, session_id, last_event_id, header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let (header, _) = self.token(auth_header).await?;
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{ErrorCode, ErrorData, JsonRpcError, JsonRpcVersion2_0, RequestId};

    fn error(id: Option<RequestId>, message: &str) -> StreamableHttpPostResponse {
        StreamableHttpPostResponse::Json(
            JsonRpcMessage::Error(JsonRpcError {
                jsonrpc: JsonRpcVersion2_0,
                id,
                error: ErrorData::new(ErrorCode(-32000), message.to_string(), None),
            }),
            None,
        )
    }

    #[test]
    fn only_idless_session_errors_and_http_400_count_as_expired_sessions() {
        type R = Result<StreamableHttpPostResponse, StreamableHttpError<std::io::Error>>;
        let yes: R = Ok(error(None, "Bad Request: No valid session ID provided"));
        assert!(is_session_rejection(&yes));
        let answered: R = Ok(error(
            Some(RequestId::Number(3)),
            "Bad Request: No valid session ID provided",
        ));
        assert!(!is_session_rejection(&answered));
        let other: R = Ok(error(None, "Parse error"));
        assert!(!is_session_rejection(&other));
        let text: R = Err(StreamableHttpError::UnexpectedServerResponse(
            "HTTP 400 Bad Request: Session not found".into(),
        ));
        assert!(is_session_rejection(&text));
        let server_error: R = Err(StreamableHttpError::UnexpectedServerResponse(
            "HTTP 500: session store down".into(),
        ));
        assert!(!is_session_rejection(&server_error));
    }
}
