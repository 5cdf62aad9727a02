//! Helpers shared by the unit tests.

/// A proptest configuration running `cases` cases, unless `PROPTEST_CASES` asks for another
/// number (the long run: `PROPTEST_CASES=100000 cargo test --lib proptest`). Each property's
/// default is small enough that all of them together stay well under a minute.
pub(crate) fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let mut config = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}
