//! The server name (SNI) of a TLS connection that fulcrum passes through without terminating:
//! read the ClientHello with rustls's `Acceptor`, keep every byte read, and hand them on.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest ClientHello read (TLS records are at most 16 KiB; a hello spanning several is rare).
const MAX_HELLO: usize = 64 * 1024;

/// What the start of a passed-through connection said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A ClientHello naming this server (lower case).
    Name(String),
    /// A ClientHello without a name, or bytes that are not a ClientHello rustls understands.
    NoName,
    /// The client closed, stalled past the timeout or sent more than [`MAX_HELLO`] first.
    Gone,
}

/// Reads from `stream` until its ClientHello is complete, appending every byte to `read`
/// (which may already hold bytes read after a PROXY header), and returns the name it asks for.
pub(crate) async fn read_server_name(
    stream: &mut TcpStream,
    read: &mut Vec<u8>,
    timeout: Duration,
) -> Hello {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < read.len() {
            match acceptor.read_tls(&mut &read[fed..]) {
                Ok(0) | Err(_) => return Hello::NoName,
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return accepted
                    .client_hello()
                    .server_name()
                    .map_or(Hello::NoName, |name| Hello::Name(name.to_ascii_lowercase()));
            }
            Ok(None) => {}
            Err(_) => return Hello::NoName,
        }
        if read.len() >= MAX_HELLO {
            return Hello::Gone;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return Hello::Gone,
            Ok(Ok(n)) => read.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// The bytes a rustls client sends first when connecting to `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        client.write_tls(&mut hello).expect("hello");
        hello
    }

    /// Sends `bytes` in pieces of `piece` from a client and reads the name on the server side.
    async fn name_of(bytes: Vec<u8>, piece: usize) -> (Hello, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let sender = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.expect("connect");
            for chunk in bytes.chunks(piece) {
                client.write_all(chunk).await.expect("write");
                client.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut read = Vec::new();
        let hello = read_server_name(&mut stream, &mut read, Duration::from_secs(5)).await;
        sender.await.expect("sender");
        (hello, read)
    }

    #[tokio::test]
    async fn the_name_is_read_whole_or_in_pieces_and_every_byte_kept() {
        let hello = client_hello("DB.Example.com");
        for piece in [hello.len(), 100, 7] {
            let (name, read) = name_of(hello.clone(), piece).await;
            assert_eq!(
                name,
                Hello::Name("db.example.com".to_owned()),
                "pieces of {piece}"
            );
            assert_eq!(read, hello, "every byte read is kept to be passed on");
        }
    }

    #[tokio::test]
    async fn bytes_that_are_not_tls_have_no_name() {
        let (name, read) = name_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 64).await;
        assert_eq!(name, Hello::NoName);
        assert!(read.starts_with(b"GET /"));
    }

    #[tokio::test]
    async fn a_client_that_closes_mid_hello_is_gone() {
        let hello = client_hello("db.example.com");
        let (name, _) = name_of(hello[..20].to_vec(), 20).await;
        assert_eq!(name, Hello::Gone);
    }
}
