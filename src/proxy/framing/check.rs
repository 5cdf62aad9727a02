//! The per-connection verdict: the scanner (through `ScannedIo`) writes the first bad request's
//! index, the request handler reads it once per request.

use std::sync::atomic::{AtomicU32, Ordering};

/// `FramingCheck::first_bad` value meaning "no request was flagged".
pub(super) const NO_BAD_REQUEST: u32 = u32::MAX;

/// Per-connection verdict shared by `ScannedIo` (writer) and the request handler.
#[derive(Debug)]
pub(crate) struct FramingCheck {
    /// Index of the first request with ambiguous framing, or [`NO_BAD_REQUEST`].
    first_bad: AtomicU32,
    /// Number of requests the handler has asked about so far.
    requests: AtomicU32,
}

impl FramingCheck {
    /// Creates a check with no request flagged and no request seen by the handler.
    pub(super) fn new() -> Self {
        Self {
            first_bad: AtomicU32::new(NO_BAD_REQUEST),
            requests: AtomicU32::new(0),
        }
    }

    /// Flags request `index`; only the earliest flagged index is kept.
    pub(super) fn mark_bad(&self, index: u32) {
        self.first_bad.fetch_min(index, Ordering::Release);
    }

    /// Call exactly once per request, in order: counts it and tells whether it (or an
    /// earlier request on this connection) had ambiguous framing and must get a 400.
    pub(crate) fn next_request_is_bad(&self) -> bool {
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        let first_bad = self.first_bad.load(Ordering::Acquire);
        first_bad != NO_BAD_REQUEST && index >= first_bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_check_rejects_from_first_bad_index() {
        let check = FramingCheck::new();
        check.mark_bad(3);
        check.mark_bad(2);
        check.mark_bad(5);
        let answers: Vec<bool> = (0..5).map(|_| check.next_request_is_bad()).collect();
        assert_eq!(answers, [false, false, true, true, true]);

        let clean = FramingCheck::new();
        assert!((0..5).all(|_| !clean.next_request_is_bad()));
    }
}
