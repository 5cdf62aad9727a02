//! The example's log on a pipe: plain text, no ANSI colour codes (the binary's rule).

use super::*;

#[test]
fn example_logs_carry_no_colour_codes_on_a_pipe() {
    let example = Path::new(env!("CARGO_BIN_EXE_fulcrum"))
        .parent()
        .map(|dir| dir.join("examples").join("user_service"))
        .expect("the binary is inside the target directory");
    if !example.exists() {
        // `cargo test` builds the examples; a filtered run (`--test user_service`) may not.
        common::tools::skip("the user_service example is not built (run `cargo test`)");
        return;
    }
    let dir = TempDir::new("example-logs");
    let mut child = std::process::Command::new(&example)
        .args(["--port", "0", "--fast-hash", "--db"])
        .arg(dir.join("users.db"))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("read the first line");
    let address = first
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the first line names the address: {first}"));
    // One answered request: the server loop, and with it the SIGTERM handler, is running.
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the example");
    std::io::Write::write_all(
        &mut stream,
        b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .expect("send a request");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read the log");
    child.wait().expect("reap the example");
    assert!(
        rest.contains("shut down"),
        "the log line was written:\n{rest}"
    );
    assert!(
        !rest.contains('\u{1b}'),
        "ANSI escape codes on a pipe:\n{rest:?}"
    );
}
