//! TorchServe's access log: one `ACCESS_LOG` line per request once it is answered,
//! `/127.0.0.1:64003 "POST /predictions/resnet-18 HTTP/1.1" 200 118`: the client, the request
//! line, the status and the milliseconds it took.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body, Frame, SizeHint};

/// The access log middleware of every HTTP listener; the client's address is the
/// `ConnectInfo<SocketAddr>` the listener puts into each request.
pub async fn log_access(request: Request, next: Next) -> Response {
    if !tracing::enabled!(target: "ACCESS_LOG", tracing::Level::INFO) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let client = Client(
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    );
    let method = request.method().clone();
    let uri = request.uri().clone();
    let version = request.version();
    let response = next.run(request).await;
    tracing::info!(
        target: "ACCESS_LOG",
        "{client} \"{method} {uri} {version:?}\" {} {}",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}

/// A client as Java prints a socket address (`/127.0.0.1:64003`); `127.0.0.1` when unknown,
/// as TorchServe writes it then.
struct Client(Option<SocketAddr>);

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "/{addr}"),
            None => f.write_str("127.0.0.1"),
        }
    }
}

/// The access log of the gRPC listeners, as TorchServe writes it:
/// `/127.0.0.1:5000 "gRPC org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions
/// HTTP/2.0" 0 12`, the status being the call's gRPC code, once the call has ended.
#[derive(Clone, Copy, Default)]
pub struct GrpcAccessLog;

impl<S> tower::Layer<S> for GrpcAccessLog {
    type Service = GrpcAccess<S>;

    fn layer(&self, inner: S) -> GrpcAccess<S> {
        GrpcAccess(inner)
    }
}

/// A gRPC service whose calls are access-logged.
#[derive(Clone)]
pub struct GrpcAccess<S>(S);

impl<S, B, R> tower::Service<http::Request<B>> for GrpcAccess<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<LoggedBody<R>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = tracing::enabled!(target: "ACCESS_LOG", tracing::Level::INFO).then(|| {
            let client = request.extensions().get::<ConnectInfo<SocketAddr>>();
            let client = client.map(|c| c.0);
            Call {
                client: Client(client),
                method: request.uri().path().trim_start_matches('/').to_string(),
                started: Instant::now(),
            }
        });
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // An answer without a message carries its status in its headers.
            let code = grpc_status(response.headers());
            Ok(response.map(|body| LoggedBody {
                inner: body,
                call,
                code,
            }))
        })
    }
}

/// A gRPC call being answered.
struct Call {
    client: Client,
    method: String,
    started: Instant,
}

/// A gRPC answer's body, which logs its call when it ends, or is dropped (a cancelled call).
pub struct LoggedBody<B> {
    inner: B,
    call: Option<Call>,
    code: Option<u32>,
}

/// gRPC's `CANCELLED`: the call ended before its status was sent.
const CANCELLED: u32 = 1;
/// gRPC's `INTERNAL`: the answer failed while it was sent.
const INTERNAL: u32 = 13;

impl<B> LoggedBody<B> {
    fn finish(&mut self, code: u32) {
        if let Some(call) = self.call.take() {
            tracing::info!(
                target: "ACCESS_LOG",
                "{} \"gRPC {} HTTP/2.0\" {} {}",
                call.client,
                call.method,
                self.code.unwrap_or(code),
                call.started.elapsed().as_millis()
            );
        }
    }
}

impl<B: Body + Unpin> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.code = grpc_status(trailers).or(this.code);
                    this.finish(0);
                }
            }
            Some(Err(_)) => this.finish(INTERNAL),
            None => this.finish(0),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}
