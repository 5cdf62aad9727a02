//! Raw HTTP/2 frames, for abuse that a well-behaved client (the `h2` crate) refuses to send:
//! floods of resets and CONTINUATION frames.

/// The client connection preface, then an empty SETTINGS frame.
pub fn preface() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes
}

/// One frame: `kind`, `flags`, `stream` and `payload` (RFC 9113 §4.1).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("a small payload")
        .to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// `GET /` for `fulcrum.test` as an HPACK block of static-table entries and one literal that
/// is not indexed, so every stream can send the same bytes.
pub fn get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 12];
    block.extend_from_slice(b"fulcrum.test");
    block
}

/// HEADERS (END_STREAM | END_HEADERS) opening `stream` with [`get_block`].
pub fn get(stream: u32) -> Vec<u8> {
    frame(0x1, 0x5, stream, &get_block())
}

/// RST_STREAM (CANCEL) on `stream`.
pub fn cancel(stream: u32) -> Vec<u8> {
    frame(0x3, 0, stream, &8u32.to_be_bytes())
}

/// The error code of the first GOAWAY in `bytes` (frames from the server), if there is one.
pub fn goaway_code(bytes: &[u8]) -> Option<u32> {
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            return None;
        }
        let payload = &rest[9..9 + len];
        if rest[3] == 0x7 && len >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        rest = &rest[9 + len..];
    }
    None
}

/// GOAWAY's ENHANCE_YOUR_CALM error code.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
