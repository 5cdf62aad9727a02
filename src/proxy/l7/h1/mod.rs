//! fulcrum's own HTTP/1.1 server side: request heads parsed and judged in one pass, bodies
//! decoded by the same decoder as the backends' responses, response heads written into a
//! buffer that lives only as long as the write. It replaces hyper's HTTP/1 server, whose read
//! and write buffers (8 KiB each, per connection, not configurable) were three quarters of a
//! busy connection's memory, and whose framing fulcrum had to re-scan byte by byte to catch
//! smuggling attempts hyper accepts.

mod encode;
pub(crate) mod head;
pub(crate) mod replay;
mod server;

pub(crate) use server::{Ended, Server};
