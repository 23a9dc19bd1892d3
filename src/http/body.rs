//! Bodies: the request body buffered (and fingerprinted as it streams in) up
//! to a limit, the handler's response collected for storage, and the body
//! type the layer answers with.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::fingerprint::Fingerprinter;

/// Errors of bodies passed through the layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a request body was not buffered.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The body is larger than the limit (declared or counted).
    TooLarge,
    /// The body stream failed (the client went away, a bad chunk, ...).
    Failed(BoxError),
}

/// Reads `body` to the end, feeding each chunk to `fingerprint`, and returns
/// it as one buffer; fails once more than `limit` bytes arrive. Trailers are
/// not kept: an idempotent write is described by its head and body.
pub(crate) async fn read_limited<B>(
    body: B,
    limit: usize,
    fingerprint: &mut Fingerprinter,
) -> Result<Bytes, ReadError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    // A declared Content-Length over the limit is refused before reading.
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| ReadError::Failed(e.into()))?;
        if let Ok(mut data) = frame.into_data() {
            let chunk = data.copy_to_bytes(data.remaining());
            total = total.saturating_add(chunk.len());
            if total > limit {
                return Err(ReadError::TooLarge);
            }
            fingerprint.update(&chunk);
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut all = BytesMut::with_capacity(total);
            for chunk in &chunks {
                all.extend_from_slice(chunk);
            }
            all.freeze()
        }
    })
}

/// What was left unread when a response could not be collected whole.
pub(crate) enum Held {
    /// The body ended with trailers, which the stored form cannot carry.
    Trailers(HeaderMap),
    /// The body stream failed.
    Error(BoxError),
}

/// A handler's response body, collected for storage.
pub(crate) enum Collected<B> {
    /// The whole body, within the limit and without trailers.
    Complete(Bytes),
    /// Collection stopped: the body is answered as read so far, followed by
    /// what stopped it and the rest of the stream.
    Partial {
        prefix: Bytes,
        held: Option<Held>,
        rest: Option<Pin<Box<B>>>,
    },
}

impl<B> Collected<B> {
    /// Why the response could not be stored, for the log.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Collected::Complete(_) => "complete",
            Collected::Partial {
                held: Some(Held::Trailers(_)),
                ..
            } => "the body has trailers",
            Collected::Partial {
                held: Some(Held::Error(_)),
                ..
            } => "the body stream failed",
            Collected::Partial { held: None, .. } => "the body is over the storage limit",
        }
    }
}

/// Collects up to `limit` bytes of `body`.
pub(crate) async fn collect_limited<B>(body: B, limit: usize) -> Collected<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut buf = BytesMut::new();
    loop {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => return Collected::Complete(buf.freeze()),
            Some(Err(e)) => {
                return Collected::Partial {
                    prefix: buf.freeze(),
                    held: Some(Held::Error(e.into())),
                    rest: None,
                }
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    buf.extend_from_slice(&chunk);
                    if buf.len() > limit {
                        return Collected::Partial {
                            prefix: buf.freeze(),
                            held: None,
                            rest: Some(body),
                        };
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Collected::Partial {
                            prefix: buf.freeze(),
                            held: Some(Held::Trailers(trailers)),
                            rest: Some(body),
                        };
                    }
                }
            },
        }
    }
}

/// The body of every response that leaves the layer: the handler's own
/// stream (for requests the layer does not cover and responses it does not
/// store), or bytes it holds (replays, problems, stored responses).
pub struct ResponseBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Full(Option<Bytes>),
    Resumed {
        prefix: Option<Bytes>,
        held: Option<Held>,
        rest: Option<Pin<Box<B>>>,
    },
}

impl<B> ResponseBody<B> {
    pub(crate) fn full(bytes: Bytes) -> Self {
        let data = (!bytes.is_empty()).then_some(bytes);
        ResponseBody {
            kind: Kind::Full(data),
        }
    }

    pub(crate) fn stream(body: B) -> Self {
        ResponseBody {
            kind: Kind::Resumed {
                prefix: None,
                held: None,
                rest: Some(Box::pin(body)),
            },
        }
    }

    pub(crate) fn from_collected(collected: Collected<B>) -> Self {
        match collected {
            Collected::Complete(bytes) => Self::full(bytes),
            Collected::Partial { prefix, held, rest } => ResponseBody {
                kind: Kind::Resumed {
                    prefix: (!prefix.is_empty()).then_some(prefix),
                    held,
                    rest,
                },
            },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(data) => f
                .debug_struct("ResponseBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Resumed { .. } => f
                .debug_struct("ResponseBody::Stream")
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every field is Unpin (the inner stream is boxed), so is Self.
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Resumed { prefix, held, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match held.take() {
                    Some(Held::Trailers(t)) => {
                        // Trailers end the body; the stream has nothing after them.
                        *rest = None;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Some(Held::Error(e)) => {
                        *rest = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    None => {}
                }
                let Some(stream) = rest.as_mut() else {
                    return Poll::Ready(None);
                };
                match stream.as_mut().poll_frame(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        *rest = None;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    ))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Resumed { prefix, held, rest } => {
                prefix.is_none()
                    && held.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Resumed { prefix, held, rest } => {
                let before = prefix.as_ref().map_or(0, |p| p.len() as u64);
                match (held, rest) {
                    (Some(_), _) | (None, None) => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(before);
                        if held.is_none() {
                            hint.set_upper(before);
                        }
                        hint
                    }
                    (None, Some(r)) => {
                        let inner = r.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(inner.lower().saturating_add(before));
                        if let Some(upper) = inner.upper() {
                            hint.set_upper(upper.saturating_add(before));
                        }
                        hint
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::collections::VecDeque;

    /// A body delivered in the given chunks, with no size hint.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    #[tokio::test]
    async fn read_limited_joins_chunks_and_fingerprints_them_streamed() {
        let mut f = Fingerprinter::raw();
        let body = read_limited(chunks(&[b"ab", b"", b"cd"]), 4, &mut f)
            .await
            .unwrap();
        assert_eq!(&body[..], b"abcd");
        assert_eq!(f.finish().unwrap(), crate::Fingerprint::of_bytes(b"abcd"));
    }

    #[tokio::test]
    async fn read_limited_refuses_one_byte_over_the_limit() {
        let mut f = Fingerprinter::raw();
        let err = read_limited(chunks(&[b"ab", b"cde"]), 4, &mut f).await;
        assert!(matches!(err, Err(ReadError::TooLarge)), "got {err:?}");
        // Declared length over the limit: refused before reading.
        let err = read_limited(Full::new(Bytes::from_static(b"12345")), 4, &mut f).await;
        assert!(matches!(err, Err(ReadError::TooLarge)), "got {err:?}");
    }

    #[tokio::test]
    async fn collect_over_the_limit_keeps_every_byte_for_the_client() {
        let collected = collect_limited(chunks(&[b"abc", b"def", b"gh"]), 4).await;
        assert_eq!(collected.reason(), "the body is over the storage limit");
        let body = ResponseBody::from_collected(collected);
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcdefgh");
    }

    #[tokio::test]
    async fn collect_within_the_limit_is_complete() {
        let collected = collect_limited(chunks(&[b"abc", b"d"]), 4).await;
        assert!(
            matches!(&collected, Collected::Complete(b) if &b[..] == b"abcd"),
            "got {}",
            collected.reason()
        );
    }
}
