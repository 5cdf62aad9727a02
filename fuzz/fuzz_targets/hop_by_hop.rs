//! Header rewriting on fields built from the input (one `name: value` per line): never
//! panics, and no hop-by-hop field, nor one `Connection` named, crosses (`Host` excepted).
#![no_main]

use fulcrum::fuzz::{ClientInfo, prepare_request, prepare_response};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let mut halves = line.splitn(2, |&b| b == b':');
        let (Some(name), Some(value)) = (halves.next(), halves.next()) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let listed: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty() && token != "host")
        .collect();
    let had_host = headers.contains_key("host");
    let mut response = headers.clone();
    let client = ClientInfo {
        ip: HeaderValue::from_static("192.0.2.1"),
        proto: HeaderValue::from_static("http"),
    };
    let mut uri = Uri::from_static("/");
    prepare_request(&mut uri, Version::HTTP_11, &mut headers, &client);
    prepare_response(Version::HTTP_11, &mut response);
    for map in [&headers, &response] {
        for name in HOP_BY_HOP
            .iter()
            .copied()
            .chain(listed.iter().map(String::as_str))
        {
            if name != "via" {
                assert!(!map.contains_key(name), "{name} crossed");
            }
        }
    }
    assert!(
        headers.contains_key("host") || !had_host,
        "Host was removed"
    );
});
