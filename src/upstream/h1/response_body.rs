//! The response body on its way down: read straight from the connection as the client side polls
//! it, then the connection handed back for reuse or, after a 101, to the upgraded protocol.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use http_body::{Frame, SizeHint};

use super::body_writer::Writing;
use super::connection::{Connection, READ_CHUNK, Stream, poll_read_into};
use super::error::Error;
use crate::http::decode::{DecodeError, Decoded, Decoder};
use crate::io::rewind::Rewind;
use bytes::Bytes;

/// Bodies with at least this much left are read into buffers of their own, handed on whole.
const LARGE_READ: u64 = 16 * 1024;
/// Largest single read of body bytes.
const MAX_READ: usize = 64 * 1024;

/// A response body read from a backend connection.
pub struct Body {
    /// The connection, until the body ends or fails.
    pub(super) conn: Option<Box<Connection>>,
    /// Where the body stands (the same decoder reads clients' request bodies).
    pub(super) decoder: Decoder,
    /// Whether the backend lets the connection carry another request after this response.
    pub(super) keep_alive: bool,
    /// The request body, when it was still being sent as the response began.
    pub(super) writing: Writing,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("decoder", &self.decoder)
            .field("keep_alive", &self.keep_alive)
            .field("writing", &matches!(self.writing, Writing::Body(_)))
            .finish_non_exhaustive()
    }
}

/// The connection of a 101 response: the protocol the two sides switched to runs on it, with
/// the bytes that arrived after the 101 head read first.
pub(crate) type Upgraded = Rewind<Stream>;

impl Body {
    /// The connection, when the body has ended and the exchange left it reusable. Called once
    /// the body is at its end; afterwards the body no longer holds the connection. It goes idle
    /// without a read buffer (its next response takes one as it arrives).
    pub fn take_idle(&mut self) -> Option<Box<Connection>> {
        let request_sent = matches!(self.writing, Writing::Done { complete: true });
        if !self.decoder.is_done() || !self.keep_alive || !request_sent {
            return None;
        }
        let mut conn = self.conn.take().filter(|conn| conn.buf.is_empty())?;
        conn.buf = BytesMut::new();
        Some(conn)
    }

    /// For a 101 response: the connection, now carrying the upgraded protocol.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        let mut conn = self.conn.take()?;
        Some(Rewind::new(conn.buf.split().freeze(), conn.io))
    }

    /// Drops the connection as soon as the response is complete and the connection cannot
    /// be reused (a request body still unsent is abandoned with it).
    pub(super) fn settle(&mut self) {
        let request_sent = matches!(self.writing, Writing::Done { complete: true });
        if self.decoder.is_done() && !(self.keep_alive && request_sent) {
            self.conn = None;
            self.writing = Writing::Done { complete: false };
        }
    }

    /// Moves the rest of the request body on. A client whose upload fails breaks the
    /// exchange; a backend that stops reading just gets no more of it.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let (Writing::Body(writer), Some(conn)) = (&mut self.writing, self.conn.as_mut()) else {
            return Ok(());
        };
        match writer.poll_write(&mut conn.io, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.writing = Writing::Done { complete: true };
                Ok(())
            }
            Poll::Ready(Err(Error::RequestBody(err))) => Err(Error::RequestBody(err)),
            Poll::Ready(Err(_)) => {
                self.writing = Writing::Done { complete: false };
                Ok(())
            }
        }
    }

    /// Marks the body finished.
    fn end(&mut self) {
        self.decoder = Decoder::Done;
        self.settle();
    }

    /// The end of the stream came: the end of a body that runs to the close (the connection
    /// then goes), an error inside any other.
    fn closed(&mut self) -> Option<Result<Frame<Bytes>, Error>> {
        match self.decoder.closed() {
            Ok(()) => {
                self.keep_alive = false;
                self.end();
                None
            }
            Err(_) => Some(Err(Error::Closed)),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.poll_writing(cx)?;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let due = match self.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    self.end();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More(due)) => due,
                Err(DecodeError::Malformed(what)) => {
                    return Poll::Ready(Some(Err(Error::Malformed(what))));
                }
            };
            match due {
                Some(due) if due >= LARGE_READ => {
                    // Plenty of data is due: read into a buffer of its own, handed on whole.
                    let want = usize::try_from(due).unwrap_or(MAX_READ).min(MAX_READ);
                    let mut own = BytesMut::with_capacity(want);
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut conn.io),
                        cx,
                        &mut own
                    ))?;
                    if read == 0 {
                        return Poll::Ready(self.closed());
                    }
                    self.decoder.consumed(read as u64);
                    if self.decoder.is_done() {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(own.freeze()))));
                }
                _ => {
                    if ready!(poll_read_into(&mut conn.io, cx, &mut conn.buf, READ_CHUNK))? == 0 {
                        return Poll::Ready(self.closed());
                    }
                }
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let next = ready!(this.poll_next(cx));
        if let Some(Err(_)) = &next {
            this.conn = None;
            this.decoder = Decoder::Done;
            this.keep_alive = false;
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backend, connect, read, request, send};
    use super::*;
    use http::header::{self, HeaderValue};
    use http::{Method, StatusCode};
    use http_body::Body as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_their_trailers() {
        let (addr, _heads) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Check: 42\r\n\r\n",
            ],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert_eq!(response.body().size_hint().exact(), None);
        let (data, trailers) = read(response.body_mut()).await.expect("body");
        assert_eq!(data, b"hello, world!!!");
        assert_eq!(trailers.expect("trailers")["x-check"], "42");
        assert!(response.body_mut().take_idle().is_some());
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let (addr, _heads) = backend(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], true).await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert_eq!(
            read(response.body_mut()).await.expect("body").0,
            b"until the end"
        );
        assert!(response.body_mut().take_idle().is_none());
    }

    #[tokio::test]
    async fn cut_off_responses_are_errors() {
        let (addr, _heads) = backend(vec![b"HTTP/1.1 200 OK\r\nContent-Le"], true).await;
        let result = send(connect(addr).await, request(Method::GET, "/")).await;
        assert!(matches!(result, Err(Error::Closed)), "{result:?}");
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        ] {
            let (addr, _heads) = backend(vec![reply], true).await;
            let mut response = send(connect(addr).await, request(Method::GET, "/"))
                .await
                .expect("head");
            assert!(read(response.body_mut()).await.is_err(), "{reply:?}");
            assert!(response.body_mut().take_idle().is_none());
        }
    }

    #[tokio::test]
    async fn a_switch_hands_over_the_connection_with_early_bytes() {
        let (addr, heads) = backend(
            vec![b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nearly"],
            false,
        )
        .await;
        let mut get = request(Method::GET, "/ws");
        get.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("echo"));
        let response = send(connect(addr).await, get).await.expect("response");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut upgraded = response.into_body().into_upgraded().expect("upgraded");
        let mut early = [0u8; 5];
        upgraded.read_exact(&mut early).await.expect("early bytes");
        assert_eq!(&early, b"early");
        upgraded
            .write_all(b"after")
            .await
            .expect("write on the upgraded connection");
        let head = &heads.await.expect("heads")[0];
        assert!(
            memchr::memmem::find(head, b"\r\nupgrade: echo\r\n").is_some(),
            "{head:?}"
        );
    }

    mod properties {
        use super::super::super::test_support::{read, request, send};
        use super::super::*;
        use crate::testing::proptest_config;
        use http::{HeaderMap, Method};
        use proptest::prelude::*;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        /// How a generated response frames its body.
        #[derive(Debug, Clone)]
        enum Framing {
            Length,
            /// Chunk sizes (the last chunk is added), with an extension on some.
            Chunked(Vec<(usize, bool)>),
            Close,
        }

        fn framing() -> impl Strategy<Value = Framing> {
            prop_oneof![
                Just(Framing::Length),
                prop::collection::vec((1usize..80, any::<bool>()), 0..6).prop_map(Framing::Chunked),
                Just(Framing::Close),
            ]
        }

        /// The response for `body`, framed as `framing`, with a trailer section of `trailers`.
        fn encode(body: &[u8], framing: &Framing, trailers: &[(String, String)]) -> Vec<u8> {
            let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
            match framing {
                Framing::Length => {
                    out.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    out.extend_from_slice(body);
                }
                Framing::Close => {
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(body);
                }
                Framing::Chunked(sizes) => {
                    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    let mut rest = body;
                    for &(size, extension) in
                        sizes
                            .iter()
                            .cycle()
                            .take(if sizes.is_empty() { 0 } else { body.len() })
                    {
                        if rest.is_empty() {
                            break;
                        }
                        let (chunk, after) = rest.split_at(size.min(rest.len()));
                        out.extend_from_slice(format!("{:X}", chunk.len()).as_bytes());
                        if extension {
                            out.extend_from_slice(b" ;name=\"va;l\"");
                        }
                        out.extend_from_slice(b"\r\n");
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                        rest = after;
                    }
                    if !rest.is_empty() {
                        out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                        out.extend_from_slice(rest);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in trailers {
                        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
            out
        }

        /// A strict chunked decoder (RFC 9112 §7.1, the grammar of `wire::chunk_size`):
        /// the data and the raw trailer section, or `None`.
        fn reference_chunked(mut bytes: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
            let mut data = Vec::new();
            loop {
                let lf = bytes.iter().position(|&b| b == b'\n')?;
                let size = usize::try_from(crate::http::wire::chunk_size(&bytes[..=lf])?).ok()?;
                bytes = &bytes[lf + 1..];
                if size == 0 {
                    let end = if bytes.starts_with(b"\r\n") {
                        2
                    } else {
                        memchr::memmem::find(bytes, b"\r\n\r\n")? + 4
                    };
                    return Some((data, bytes[..end].to_vec()));
                }
                let chunk = bytes.get(..size)?;
                data.extend_from_slice(chunk);
                bytes = bytes.get(size..)?.strip_prefix(b"\r\n")?;
            }
        }

        /// A body's data and trailers, or its error.
        type Decoded = Result<(Vec<u8>, Option<HeaderMap>), String>;

        /// What fulcrum's client makes of `reply`, and whether the connection was offered for
        /// reuse.
        fn decode(reply: Vec<u8>) -> (Decoded, bool) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("address");
                tokio::spawn(async move {
                    let (mut socket, _) = listener.accept().await.expect("accept");
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    // The test reads what arrives; a write error is the client's to see.
                    let _ = socket.write_all(&reply).await;
                    let _ = socket.shutdown().await;
                });
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let conn = Connection::new(Stream::Tcp(crate::io::socket::Socket::new(stream)));
                let mut response = match send(conn, request(Method::GET, "/")).await {
                    Ok(response) => response,
                    Err(err) => return (Err(err.to_string()), false),
                };
                let body = read(response.body_mut())
                    .await
                    .map_err(|err| err.to_string());
                let reused = response.body_mut().take_idle().is_some();
                (body, reused)
            })
        }

        fn field() -> impl Strategy<Value = (String, String)> {
            ("x-[a-z]{1,6}", "[a-zA-Z0-9 ]{0,8}")
                .prop_map(|(name, value)| (name, value.trim().to_owned()))
        }

        proptest! {
            #![proptest_config(proptest_config(128))]

            /// Every well-framed body comes back whole with its trailers; nothing past a
            /// declared length is read as body; only a response that ended exactly at its
            /// boundary gives its connection back.
            #[test]
            fn well_framed_bodies_decode_exactly(
                body in prop::collection::vec(any::<u8>(), 0..300),
                framing in framing(),
                trailers in prop::collection::vec(field(), 0..3),
                extra in prop::collection::vec(any::<u8>(), 0..8),
            ) {
                let mut reply = encode(&body, &framing, &trailers);
                if !matches!(framing, Framing::Close) {
                    reply.extend_from_slice(&extra);
                }
                let (decoded, reused) = decode(reply);
                let (data, got_trailers) = decoded.map_err(TestCaseError::fail)?;
                prop_assert_eq!(data, body);
                let expected: Vec<(String, String)> = match framing {
                    Framing::Chunked(_) => trailers,
                    _ => Vec::new(),
                };
                let got: Vec<(String, String)> = got_trailers
                    .iter()
                    .flatten()
                    .map(|(name, value)| (name.to_string(), value.to_str().expect("ASCII").to_owned()))
                    .collect();
                prop_assert_eq!(got, expected);
                let boundary = extra.is_empty() && !matches!(framing, Framing::Close);
                prop_assert_eq!(reused, boundary);
            }

            /// With one byte of a chunked body changed, fulcrum accepts exactly what the strict
            /// reference decoder accepts, with the same data.
            #[test]
            fn damaged_chunked_bodies_agree_with_the_reference(
                body in prop::collection::vec(b'a'..=b'z', 0..120),
                sizes in prop::collection::vec((1usize..40, any::<bool>()), 1..4),
                trailers in prop::collection::vec(field(), 0..2),
                at in any::<prop::sample::Index>(),
                byte in prop::sample::select(b"0123456789aAfFgG \t;\r\n:x".to_vec()),
            ) {
                let mut reply = encode(&body, &Framing::Chunked(sizes), &trailers);
                let head_end = memchr::memmem::find(&reply, b"\r\n\r\n").expect("head") + 4;
                let at = head_end + at.index(reply.len() - head_end);
                reply[at] = byte;
                let reference = reference_chunked(&reply[head_end..]);
                let (decoded, _) = decode(reply.clone());
                match (decoded, reference) {
                    (Ok((data, _)), Some((expected, _))) => prop_assert_eq!(data, expected),
                    (Ok((data, _)), None) => prop_assert!(false, "accepted {:?} as {:?}", String::from_utf8_lossy(&reply), data),
                    (Err(_), Some((_, trailers))) => {
                        // Only a trailer section the field parser refuses may differ.
                        let valid = trailers.as_slice() == b"\r\n" || crate::http::wire::trailers(&trailers).is_some();
                        prop_assert!(!valid, "refused {:?}", String::from_utf8_lossy(&reply));
                    }
                    (Err(_), None) => {}
                }
            }
        }
    }
}
