//! Every example config shipped in `config/` must parse and validate, without warnings.

use std::path::Path;

#[test]
fn every_file_in_config_dir_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            match fulcrum::Config::load(&path) {
                Err(err) => panic!("{} is invalid:\n{err}", path.display()),
                Ok(config) => assert!(
                    config.warnings.is_empty(),
                    "{} has warnings: {:?}",
                    path.display(),
                    config.warnings
                ),
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the example configs in {}",
        dir.display()
    );
}
