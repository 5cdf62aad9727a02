//! Listening sockets handed over at start: by systemd's socket activation, or by the old
//! process of a binary upgrade (see [`super::upgrade`]). Both use the `LISTEN_FDS` protocol
//! (descriptors from 3 on, names in `LISTEN_FDNAMES`); an upgrade leaves `LISTEN_PID` unset,
//! since the old process cannot know the new one's PID before it starts.
//!
//! A listener takes the inherited socket named after it (an upgrade names them; a systemd
//! socket unit may, with `FileDescriptorName=`) if it is bound where the listener's config says
//! (the same address, or the same IP for a configured port 0), else the one bound at exactly
//! its address. A listener with none binds its own; a socket no listener takes is closed.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// One inherited listening socket.
#[derive(Debug)]
struct Socket {
    name: Option<String>,
    address: SocketAddr,
    listener: std::net::TcpListener,
}

/// The sockets this process inherited, until the listeners take them.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    sockets: Vec<Socket>,
}

impl Inherited {
    /// The TCP listening sockets in this process's `LISTEN_FDS`, if any.
    pub(crate) fn from_env() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Inherited::default();
        }
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|names| names.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut sockets = Vec::new();
        for index in 0..fds.len() {
            let taken = fds.take_tcp_listener(index).and_then(|listener| {
                let Some(listener) = listener else {
                    return Ok(None);
                };
                let address = listener.local_addr()?;
                Ok(Some((listener, address)))
            });
            match taken {
                Ok(Some((listener, address))) => sockets.push(Socket {
                    name: names.get(index).filter(|name| !name.is_empty()).cloned(),
                    address,
                    listener,
                }),
                Ok(None) => {}
                Err(err) => tracing::warn!(
                    fd = index + 3,
                    error = %err,
                    "ignoring an inherited descriptor that is not a TCP listening socket"
                ),
            }
        }
        tracing::info!(sockets = sockets.len(), "inherited listening sockets");
        Inherited { sockets }
    }

    /// The inherited socket for the listener `name` configured at `address`, if there is one.
    pub(crate) fn take(
        &mut self,
        name: &str,
        address: SocketAddr,
    ) -> std::io::Result<Option<TcpListener>> {
        let fits = |socket: &Socket| {
            socket.address == address
                || (address.port() == 0 && socket.address.ip() == address.ip())
        };
        let position = self
            .sockets
            .iter()
            .position(|socket| socket.name.as_deref() == Some(name) && fits(socket))
            .or_else(|| {
                self.sockets
                    .iter()
                    .position(|socket| socket.address == address)
            });
        let Some(position) = position else {
            return Ok(None);
        };
        let socket = self.sockets.swap_remove(position);
        tracing::info!(listener = name, address = %socket.address, "using an inherited socket");
        socket.listener.set_nonblocking(true)?;
        TcpListener::from_std(socket.listener).map(Some)
    }

    /// Closes the sockets no listener took, saying so.
    pub(crate) fn close_rest(self) {
        for socket in self.sockets {
            tracing::warn!(
                address = %socket.address,
                name = socket.name.as_deref().unwrap_or("-"),
                "closing an inherited socket no listener is configured for"
            );
        }
    }
}
