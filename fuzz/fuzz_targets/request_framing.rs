//! The HTTP/1.1 server's request framing: never panics, and what it serves does not depend on
//! how the bytes were split across reads. The first byte picks the split points.
#![no_main]

use fulcrum::fuzz::serve_requests;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = serve_requests(input, &[]);
    let step = usize::from(seed % 16) + 1;
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    assert_eq!(
        serve_requests(input, &cuts),
        whole,
        "split every {step} bytes"
    );
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(serve_requests(input, &bytewise), whole, "split into bytes");
});
