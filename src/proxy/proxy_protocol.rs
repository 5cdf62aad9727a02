//! The PROXY protocol (HAProxy, "The PROXY protocol" versions 1 and 2): how a TCP balancer
//! tells the next hop who the client is.
//!
//! TCP pools can send a header to their backends ([`encode`]); TCP listeners can accept one from
//! a front balancer ([`read`]). Parsing and the binary form use the `ppp` crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyProtocol;

/// A v1 header is at most 107 bytes; a v2 header is 16 bytes plus its length field, and we do
/// not accept TLV payloads larger than this.
const MAX_HEADER: usize = 1024;

/// Why an incoming PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// The client closed or failed before sending a whole header.
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY header, or a malformed one.
    #[error("invalid PROXY protocol header")]
    Invalid,
    /// The header did not arrive in time.
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
}

/// The header announcing a connection from `client` to `server` (spec §2.1 for v1, §2.2 for v2).
/// Mixed address families are first mapped to IPv6, as the spec asks of proxies.
pub(crate) fn encode(version: ProxyProtocol, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (client, server) = same_family(client, server);
    match version {
        ProxyProtocol::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                server.ip(),
                client.port(),
                server.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let builder = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                (client, server),
            );
            // Building into a Vec cannot fail for plain addresses.
            builder.build().unwrap_or_default()
        }
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// Longest v1 header, CRLF included (spec §2.1).
const V1_MAX: usize = 107;

/// The two ends a PROXY header announces: the original client and the address it connected to.
pub(crate) type Endpoints = (SocketAddr, SocketAddr);

/// Reads a v1 or v2 header from the start of `stream` within `timeout`. Returns the endpoints it
/// announces (`None` for `UNKNOWN`/`LOCAL`) and any bytes read past the header, which belong to
/// the proxied stream.
pub(crate) async fn read(
    stream: &mut (impl AsyncRead + Unpin),
    timeout: Duration,
) -> Result<(Option<Endpoints>, Vec<u8>), ProxyHeaderError> {
    tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

async fn read_header(
    stream: &mut (impl AsyncRead + Unpin),
) -> Result<(Option<Endpoints>, Vec<u8>), ProxyHeaderError> {
    let mut buffer = Vec::with_capacity(256);
    loop {
        let mut chunk = [0u8; 256];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(ProxyHeaderError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some((source, length)) = parse(&buffer)? {
            return Ok((source, buffer.split_off(length)));
        }
        if buffer.len() > MAX_HEADER {
            return Err(ProxyHeaderError::Invalid);
        }
    }
}

/// `Ok(None)` while more bytes are needed; else the endpoints and the header length.
pub(crate) fn parse(buffer: &[u8]) -> Result<Option<(Option<Endpoints>, usize)>, ProxyHeaderError> {
    // A v1 header ends at its CRLF, within 107 bytes (spec §2.1). Before that arrives, ppp's
    // verdict on a prefix is not final: it calls `PROXY TCP4 … 1000 ` (cut before the
    // destination port) invalid, which would refuse a header split across two reads.
    if buffer.starts_with(b"PROXY ")
        && buffer.len() < V1_MAX
        && memchr::memmem::find(buffer, b"\r\n").is_none()
    {
        return Ok(None);
    }
    let result = HeaderResult::parse(buffer);
    if result.is_incomplete() {
        return Ok(None);
    }
    match result {
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                ppp::v1::Addresses::Tcp4(ip) => Some((
                    SocketAddr::from((ip.source_address, ip.source_port)),
                    SocketAddr::from((ip.destination_address, ip.destination_port)),
                )),
                ppp::v1::Addresses::Tcp6(ip) => Some((
                    SocketAddr::from((ip.source_address, ip.source_port)),
                    SocketAddr::from((ip.destination_address, ip.destination_port)),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((source, header.header.len())))
        }
        HeaderResult::V2(Ok(header)) => {
            let source = match (header.command, header.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(ip)) => Some((
                    SocketAddr::from((ip.source_address, ip.source_port)),
                    SocketAddr::from((ip.destination_address, ip.destination_port)),
                )),
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(ip)) => Some((
                    SocketAddr::from((ip.source_address, ip.source_port)),
                    SocketAddr::from((ip.destination_address, ip.destination_port)),
                )),
                _ => None,
            };
            Ok(Some((source, header.len())))
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(ProxyHeaderError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_matches_the_spec_examples() {
        // Spec §2.1: "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n" and the TCP6 form.
        assert_eq!(
            encode(
                ProxyProtocol::V1,
                addr("192.168.0.1:56324"),
                addr("192.168.0.11:443")
            ),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            encode(
                ProxyProtocol::V1,
                addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
                addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")
            ),
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec()
        );
    }

    #[test]
    fn v2_is_byte_exact() {
        // Spec §2.2: 12-byte signature, version 2 + PROXY (0x21), TCP over IPv4 (0x11),
        // length 12, then source address, destination address, source port, destination port.
        let header = encode(
            ProxyProtocol::V2,
            addr("127.0.0.1:80"),
            addr("192.168.1.1:443"),
        );
        let mut expected = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
            0x00, 0x0C, 127, 0, 0, 1, 192, 168, 1, 1,
        ];
        expected.extend_from_slice(&80u16.to_be_bytes());
        expected.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(header, expected);
    }

    #[test]
    fn mixed_families_are_mapped_to_ipv6() {
        let header = encode(ProxyProtocol::V1, addr("10.0.0.1:1000"), addr("[::1]:80"));
        assert_eq!(header, b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1000 80\r\n");
    }

    #[tokio::test]
    async fn read_returns_the_source_and_the_bytes_after_the_header() {
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let mut input = encode(version, addr("203.0.113.9:4242"), addr("10.0.0.2:5432"));
            input.extend_from_slice(b"hello");
            let (endpoints, rest) = read(&mut input.as_slice(), Duration::from_secs(1))
                .await
                .expect("valid header");
            assert_eq!(
                endpoints,
                Some((addr("203.0.113.9:4242"), addr("10.0.0.2:5432")))
            );
            assert_eq!(rest, b"hello");
        }
    }

    #[tokio::test]
    async fn read_accepts_a_header_split_across_reads() {
        let (mut client, mut server) = tokio::io::duplex(8);
        let sender = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nx" {
                client.write_all(&[*byte]).await.expect("write");
            }
            client
        });
        let (endpoints, rest) = read(&mut server, Duration::from_secs(1))
            .await
            .expect("valid header");
        assert_eq!(endpoints, Some((addr("1.2.3.4:1"), addr("5.6.7.8:2"))));
        // Bytes after the header may or may not have arrived with it.
        assert!(rest.is_empty() || rest == b"x");
        drop(sender.await);
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert!(matches!(
            read(&mut input.as_slice(), Duration::from_secs(1)).await,
            Err(ProxyHeaderError::Invalid)
        ));
    }

    /// Found by `encoded_headers_parse_back`: a v1 header cut after the source port's space
    /// was refused instead of waited for.
    #[test]
    fn a_v1_header_cut_before_its_destination_port_is_incomplete() {
        let header = b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n";
        assert!(matches!(parse(&header[..29]), Ok(None)));
        assert!(matches!(parse(header), Ok(Some((Some(_), 32)))));
    }

    mod properties {
        use super::super::*;
        use crate::testing::proptest_config;
        use proptest::prelude::*;

        fn endpoint() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (any::<[u8; 4]>(), any::<u16>())
                    .prop_map(|(ip, port)| SocketAddr::from((ip, port))),
                (any::<[u8; 16]>(), any::<u16>())
                    .prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            ]
        }

        /// Bytes that start like a header often enough to reach the parser's inner paths.
        fn header_like() -> impl Strategy<Value = Vec<u8>> {
            let start = prop_oneof![
                Just(b"PROXY ".to_vec()),
                Just(b"PROXY TCP4 ".to_vec()),
                Just(b"PROXY TCP6 ".to_vec()),
                Just(b"\r\n\r\n\0\r\nQUIT\n".to_vec()),
                Just(Vec::new()),
            ];
            (start, prop::collection::vec(any::<u8>(), 0..120)).prop_map(|(mut start, rest)| {
                start.extend(rest);
                start
            })
        }

        proptest! {
            #![proptest_config(proptest_config(2048))]

            /// Never panics, and a header it accepts lies within the bytes it was given.
            #[test]
            fn parse_never_reads_past_its_input(bytes in header_like()) {
                if let Ok(Some((_, length))) = parse(&bytes) {
                    prop_assert!(length <= bytes.len());
                }
            }

            /// What `encode` writes, `parse` reads back: the endpoints (mapped to one family)
            /// and the header's exact length, whatever follows it; every shorter prefix is
            /// incomplete.
            #[test]
            fn encoded_headers_parse_back(
                v2 in any::<bool>(),
                client in endpoint(),
                server in endpoint(),
                after in prop::collection::vec(any::<u8>(), 0..16),
            ) {
                let version = if v2 { ProxyProtocol::V2 } else { ProxyProtocol::V1 };
                let header = encode(version, client, server);
                let mut bytes = header.clone();
                bytes.extend_from_slice(&after);
                let parsed = parse(&bytes).expect("a valid header").expect("a whole header");
                prop_assert_eq!(parsed, (Some(same_family(client, server)), header.len()));
                for cut in 0..header.len() {
                    prop_assert!(matches!(parse(&header[..cut]), Ok(None)), "prefix of {}", cut);
                }
            }
        }
    }
}
