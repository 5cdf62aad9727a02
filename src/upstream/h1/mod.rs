//! Upstream HTTP/1.1, driven in the task of the request it carries.
//!
//! hyper's client connection runs as a task of its own and passes every request, response head
//! and body chunk across channels to the request's task. Measured with callgrind on small
//! keep-alive responses, that connection task was 41 % of the proxy's user-space instructions.
//! Here the request's own future writes the head, streams the body and parses the response
//! head with `httparse` (the parser hyper uses), and the response body reads straight from the
//! socket while the client side polls it; an idle connection is just a socket in the backend's
//! pool.
//!
//! Framing follows RFC 9112 §6: responses to HEAD and 1xx/204/304 have no body;
//! `Transfer-Encoding: chunked` is decoded (trailers become a trailers frame); otherwise
//! `Content-Length`, else the body runs to the end of the connection. A response with both
//! fields, conflicting lengths or a transfer coding other than chunked last is refused, since a
//! proxy that guesses there is the way into response splitting. A connection is reused only
//! when the exchange ended exactly at a message boundary and both sides allow keep-alive.
//!
//! `connection` holds a connection between exchanges and its transport, `head` parses and
//! encodes heads, `body_writer` sends the request body up and `response_body` reads the response
//! body down; this file is the exchange that ties them together.

mod body_writer;
mod connection;
mod error;
mod head;
mod response_body;

pub(crate) use self::connection::{Connection, Stream};
pub(crate) use self::error::{Error, SendError};
pub(crate) use self::head::judge_response_head;
pub(crate) use self::response_body::{Body, Upgraded};

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use self::body_writer::{BodyWriter, Writing};
use self::connection::{Deadline, HEAD_READ, poll_read_into};
use self::head::{Head, MAX_HEAD, encode_head, parse_head};
use super::request_body::{BoxedRequest, RequestBody};
use crate::http::decode::Decoder;
use crate::http::headers::Forwarding;

/// How long an exchange waits for its response head.
#[derive(Debug, Clone, Copy)]
pub struct HeadWait {
    /// The deadline while nothing of the request is left to stream up (a bodiless request,
    /// or the head still being written).
    pub deadline: Instant,
    /// Once a request body has been sent whole, the wait counted from that moment. While the
    /// body streams, no deadline runs: the client's upload time is not the backend's, and the
    /// client connection's idle timeout stops an upload that stalls.
    pub after_body: std::time::Duration,
}

impl Connection {
    /// Sends `request` with the proxy's `forwarding` fields and waits for the response head
    /// as `wait` says (then [`Error::TimedOut`]). The response body streams from the
    /// connection and gives it back for reuse when it ends cleanly ([`Body::take_idle`]).
    ///
    /// The request body is written while the response head is awaited and, when the backend
    /// answers before it is complete (an echo, an early error), while the response body
    /// streams. The connection is reused only when both messages completed.
    ///
    /// One `async move` block, not an `async fn`, so the arguments are not stored twice.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    pub fn send(
        mut self: Box<Self>,
        mut request: BoxedRequest,
        forwarding: &Forwarding<'_>,
        wait: HeadWait,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> {
        async move {
            self.deadline.set(wait.deadline);
            let framing = encode_head(&request, forwarding, &mut self.head);
            let mut written = 0;
            let wrote = std::future::poll_fn(|cx| {
                let write = poll_write_head(&mut self.io, cx, &self.head, &mut written);
                before(&mut self.deadline, cx, write.map_err(Error::from))
            })
            .await;
            // The request's head (its box, the body taken out) is kept until the response's
            // arrives, for the caller to replay should none come; the response's fields get a
            // map of their own.
            let body = match wrote {
                Ok(()) => std::mem::replace(request.body_mut(), RequestBody::Empty),
                Err(Error::TimedOut) => {
                    *request.body_mut() = RequestBody::Empty;
                    return Err(SendError::Failed(Error::TimedOut, Some(request)));
                }
                Err(err) => return Err(SendError::NotSent(request, err)),
            };
            let head_request = request.method() == Method::HEAD;
            let mut writer = BodyWriter::new(body, framing);
            let mut headers = HeaderMap::new();
            let mut write_error = None;
            let mut streaming = !writer.done;
            let parsed = std::future::poll_fn(|cx| {
                if !writer.done {
                    match writer.poll_write(&mut self.io, cx) {
                        Poll::Ready(Err(Error::RequestBody(err))) => {
                            return Poll::Ready(Err(Error::RequestBody(err)));
                        }
                        Poll::Ready(Err(err)) => {
                            // The backend may have answered and closed; read what it said.
                            writer.done = true;
                            write_error = Some(err);
                        }
                        Poll::Ready(Ok(())) | Poll::Pending => {}
                    }
                }
                if streaming && writer.done {
                    streaming = false;
                    let deadline = Instant::now() + wait.after_body;
                    self.deadline.set(deadline);
                }
                let head = self.poll_head(cx, &mut headers);
                if streaming {
                    return head;
                }
                before(&mut self.deadline, cx, head)
            })
            .await;
            let head = match (parsed, write_error) {
                (Ok(head), _) => head,
                (Err(Error::RequestBody(err)), _) => {
                    return Err(SendError::Failed(Error::RequestBody(err), None));
                }
                (Err(_), Some(err)) | (Err(err), None) => {
                    return Err(SendError::Failed(err, Some(request)));
                }
            };
            drop(request);
            let writing = if writer.done {
                Writing::Done {
                    complete: writer.complete,
                }
            } else {
                Writing::Body(Box::new(writer))
            };
            self.respond(head, headers, head_request, writing)
                .map_err(|err| SendError::Failed(err, None))
        }
    }

    /// Reads until a final response head is buffered; 1xx interim responses are skipped.
    /// The head's fields go into `headers`.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        headers: &mut HeaderMap,
    ) -> Poll<Result<Head, Error>> {
        loop {
            if let Some(head) = parse_head(&self.buf, headers)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    self.buf.advance(head.len);
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            if self.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Malformed("response head too large")));
            }
            // Waiting for a head holds no buffer: a read takes one of the size of what came.
            let read = if self.buf.is_empty() {
                crate::io::poll_read_landing(&mut self.io, cx, &mut self.buf)
            } else {
                poll_read_into(&mut self.io, cx, &mut self.buf, HEAD_READ)
            };
            if ready!(read)? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }

    /// Builds the response for `head` and decides how its body is framed.
    fn respond(
        mut self: Box<Self>,
        head: Head,
        mut headers: HeaderMap,
        head_request: bool,
        writing: Writing,
    ) -> Result<Response<Body>, Error> {
        self.buf.advance(head.len);
        let Head {
            status,
            version,
            fields,
            reason,
            ..
        } = head;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now carries another protocol: see `Body::into_upgraded`.
            let mut response = Response::new(Body {
                conn: Some(self),
                decoder: Decoder::Done,
                keep_alive: false,
                writing,
            });
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            return Ok(response);
        }
        let keep_alive = fields.allow_keep_alive(version);
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let decoder = if bodiless {
            Decoder::Done
        } else {
            fields.body_framing()?
        };
        if let Some(length) = fields.length {
            // A body framed by this length carries it to hyper's encoder, which writes the
            // field (`content-length: 0` too). A HEAD or 304 answer's length describes a body
            // not sent: the field goes back as the backend sent it.
            let carried = match decoder {
                Decoder::Length(framed) => framed == length,
                Decoder::Done => length == 0 && !bodiless,
                _ => false,
            };
            if !carried {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        let mut response = Response::new(Body {
            conn: Some(self),
            decoder,
            keep_alive,
            writing,
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason {
            response.extensions_mut().insert(reason);
        }
        response.body_mut().settle();
        Ok(response)
    }
}

/// Writes the rest of `head` from `written` on and flushes it (a no-op on TCP; TLS may hold
/// written bytes).
fn poll_write_head(
    io: &mut Stream,
    cx: &mut Context<'_>,
    head: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while let Some(rest) = head.get(*written..).filter(|rest| !rest.is_empty()) {
        match ready!(Pin::new(&mut *io).poll_write(cx, rest))? {
            0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => *written += n,
        }
    }
    Pin::new(io).poll_flush(cx)
}

/// `work`, or [`Error::TimedOut`] once `deadline` has passed while it is still pending.
fn before<T>(
    deadline: &mut Deadline,
    cx: &mut Context<'_>,
    work: Poll<Result<T, Error>>,
) -> Poll<Result<T, Error>> {
    match work {
        Poll::Pending => deadline.poll(cx).map(|()| Err(Error::TimedOut)),
        work => work,
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::{backend, connect, read, request, send, sent};
    use super::*;
    use crate::http::headers::test_forwarding as forwarding;
    use http_body::Body as _;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn length_framed_responses_reuse_the_connection() {
        let (addr, heads) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
                b"HTTP/1.1 404 Not Here\r\ncontent-length: 3\r\n\r\nbye",
            ],
            false,
        )
        .await;
        let conn = connect(addr).await;
        let mut response = send(conn, request(Method::GET, "/a?b=c"))
            .await
            .expect("first");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(response.body().size_hint().exact(), Some(5));
        let (data, _) = read(response.body_mut()).await.expect("body");
        assert_eq!(data, b"hello");
        let mut conn = response.body_mut().take_idle().expect("reusable");
        assert!(!conn.is_closed());
        assert_eq!(conn.buf.capacity(), 0, "no read buffer is kept while idle");
        let mut response = send(conn, request(Method::POST, "/b"))
            .await
            .expect("second");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let reason = response.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Not Here"[..]));
        assert_eq!(read(response.body_mut()).await.expect("body").0, b"bye");
        let heads = heads.await.expect("heads");
        assert_eq!(heads[0], sent("GET /a?b=c HTTP/1.1\r\nhost: app.test\r\n"));
        assert_eq!(
            heads[1],
            sent("POST /b HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0\r\n"),
            "an empty POST says so"
        );
    }

    /// Each exchange gets the whole timeout, counted from its own start: the connection's one
    /// timer is moved on, not left at the first exchange's deadline.
    #[tokio::test(start_paused = true)]
    async fn every_exchange_gets_its_own_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut chunk = [0u8; 4096];
            // Two answers 400 ms after their requests, then silence.
            for _ in 0..2 {
                assert!(socket.read(&mut chunk).await.expect("read request") > 0);
                tokio::time::sleep(Duration::from_millis(400)).await;
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                socket.write_all(reply).await.expect("write reply");
            }
            let _ = socket.read(&mut chunk).await;
            std::future::pending::<()>().await;
        });
        let timeout = Duration::from_millis(500);
        let mut conn = connect(addr).await;
        for exchange in ["first", "second"] {
            let response = conn
                .send(
                    request(Method::GET, "/"),
                    &forwarding(),
                    HeadWait {
                        deadline: Instant::now() + timeout,
                        after_body: timeout,
                    },
                )
                .await
                .unwrap_or_else(|_| panic!("{exchange} exchange failed"));
            conn = response.into_body().take_idle().expect("reusable");
        }
        let started = Instant::now();
        match conn
            .send(
                request(Method::GET, "/"),
                &forwarding(),
                HeadWait {
                    deadline: started + timeout,
                    after_body: timeout,
                },
            )
            .await
        {
            // The head comes back, for a replay on another backend.
            Err(SendError::Failed(Error::TimedOut, Some(head))) => {
                assert_eq!(head.method(), Method::GET);
            }
            Ok(_) => panic!("a silent backend answered"),
            Err(SendError::NotSent(_, err) | SendError::Failed(err, _)) => panic!("{err}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_millis(5),
            "{waited:?}"
        );
    }

    /// The response's `Content-Length` field: kept where it describes a body not sent, left to
    /// the body's own length (which hyper writes) where it frames the body.
    #[tokio::test]
    async fn bodiless_responses_ignore_their_length() {
        for (method, reply, field) in [
            (
                Method::HEAD,
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..],
                Some("10"),
            ),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n", None),
            (
                Method::GET,
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                Some("7"),
            ),
            (
                Method::GET,
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                None,
            ),
        ] {
            let (addr, _heads) = backend(vec![reply], false).await;
            let mut response = send(connect(addr).await, request(method, "/"))
                .await
                .expect("response");
            assert!(response.body().is_end_stream(), "{reply:?}");
            assert_eq!(response.body().size_hint().exact(), Some(0), "{reply:?}");
            assert_ne!(response.status(), StatusCode::CONTINUE);
            let length = response.headers().get(header::CONTENT_LENGTH);
            assert_eq!(
                length.map(|v| v.as_bytes()),
                field.map(str::as_bytes),
                "{reply:?}"
            );
            assert!(response.body_mut().take_idle().is_some(), "{reply:?}");
        }
    }

    #[tokio::test]
    async fn a_framing_length_travels_as_the_bodys_size() {
        let (addr, _heads) = backend(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
        assert_eq!(response.body().size_hint().exact(), Some(5));
        assert_eq!(read(response.body_mut()).await.expect("body").0, b"hello");
    }
}
