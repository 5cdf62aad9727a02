//! `Config::parse`: never panics, and every error it reports has a position in the file.
#![no_main]

use fulcrum::fuzz::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = Config::parse("fuzz.toml", source) {
        let lines = source.lines().count() + 1;
        assert!(!err.problems().is_empty());
        for problem in err.problems() {
            assert!(problem.line >= 1 && problem.line <= lines, "{problem}");
            assert!(problem.column >= 1, "{problem}");
        }
    }
});
