//! Arbitrary bytes into the proxy's parsers (SOCKS5 greeting, RFC 1929 credentials,
//! CONNECT request; HTTP CONNECT head), as the proxy feeds them: the same growing
//! buffer, one parser after another. Beyond "no panic": a parser never claims more bytes
//! than it was given, and a message it accepts parses the same with trailing bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

// The parsers use only std, so the file is compiled here as it is (no fishd build).
#[path = "../../fishd/src/proxy/wire.rs"]
#[allow(dead_code)]
mod wire;

fn check<T: PartialEq + std::fmt::Debug>(data: &[u8], parse: fn(&[u8]) -> wire::Parsed<T>) -> usize {
    match parse(data) {
        Ok(Some((value, used))) => {
            assert!(used > 0 && used <= data.len(), "claimed {used} of {} bytes", data.len());
            let mut longer = data[..used].to_vec();
            longer.extend_from_slice(b"\x05\x01trailing");
            let again = parse(&longer).expect("a message parses again with bytes after it");
            assert_eq!(again, Some((value, used)));
            used
        }
        Ok(None) | Err(_) => data.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    // SOCKS5 as a client sends it: greeting, maybe credentials, request.
    let mut at = check(data, wire::parse_greeting);
    if at < data.len() {
        at += check(&data[at..], wire::parse_userpass);
    }
    if at < data.len() {
        check(&data[at..], wire::parse_request);
    }
    check(data, wire::parse_request);
    check(data, wire::parse_http_head);
    if let Ok(Some((connect, _))) = wire::parse_http_head(data) {
        // Whatever it names fits in a SOCKS5 request too: names are at most 255 bytes.
        if let wire::Target::Name(name, _) = &connect.target {
            assert!(!name.is_empty() && name.len() <= 255);
        }
    }
});
