//! Hostile request bodies: each must be refused with a clear error, quickly, without a
//! panic and without spending memory in proportion to what the input asks for.
//!
//! These run in CI, in debug builds, so the 2 s bound is generous for a release fishd; the
//! large inputs are built once per test and their cost is part of what is measured.
//! The bound is on the test thread's CPU time, not the wall clock: it is there to catch work
//! that grows faster than the input (minutes, not seconds), and a busy machine stretches
//! wall time without the parser doing any more work (it failed at load 12 on wall time).

use std::sync::Mutex;
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

use api_types::manifest::{
    MAX_BODY_BYTES, MAX_DEPTH, MAX_DOCUMENTS, MAX_KEY_BYTES, MAX_NODES, MAX_SCALAR_BYTES, MAX_STRING_BYTES,
};
use api_types::{Format, Manifest, ManifestError, parse_manifests};

const LIMIT: Duration = Duration::from_secs(2);

/// CPU time spent by the calling thread since [`CpuTimer::start`].
struct CpuTimer(Duration);

impl CpuTimer {
    fn start() -> Self {
        Self(thread_cpu())
    }

    fn elapsed(&self) -> Duration {
        thread_cpu().saturating_sub(self.0)
    }
}

fn thread_cpu() -> Duration {
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("Linux has a per-thread CPU clock");
    Duration::from(now)
}

/// Held by every test, so that the time measured is the parser's and not that of other
/// tests building 50 MB inputs on the same two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Parses `body`, asserts it is refused within [`LIMIT`], and returns the error.
fn refused(body: &[u8], format: Format) -> ManifestError {
    let start = CpuTimer::start();
    let result = parse_manifests(body, format);
    let took = start.elapsed();
    assert!(took < LIMIT, "took {took:?} on a {} byte {format:?} body", body.len());
    match result {
        Ok(docs) => panic!("accepted {} documents from a hostile {format:?} body", docs.len()),
        Err(e) => e,
    }
}

/// Asserts a syntax error whose message contains every one of `words`.
fn syntax_error(body: &[u8], format: Format, words: &[&str]) {
    match refused(body, format) {
        ManifestError::Syntax { message, .. } => {
            for w in words {
                assert!(message.contains(w), "{format:?} error {message:?} does not mention {w:?}");
            }
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

/// Asserts an invalid-document error naming `field`.
fn invalid_field(body: &[u8], format: Format, field: &str) {
    match refused(body, format) {
        ManifestError::Invalid { errors, .. } => {
            assert!(errors.iter().any(|e| e.field == field), "{errors:?} does not name {field}");
        }
        other => panic!("expected an invalid document, got {other:?}"),
    }
}

fn big(n: usize, c: char) -> String {
    c.to_string().repeat(n)
}

#[test]
fn billion_laughs() {
    let _serial = serial();
    // Ten levels of ten aliases each: 10^10 nodes if expanded.
    let mut s = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = format!("*a{}", i - 1);
        s.push_str(&format!("a{i}: &a{i} [{}]\n", [p.as_str(); 10].join(", ")));
    }
    syntax_error(s.as_bytes(), Format::Yaml, &["aliases"]);
}

#[test]
fn one_large_anchor_replayed_many_times() {
    let _serial = serial();
    // 512 KiB of text, under every per-scalar limit, named 100 times: 50 MiB of strings
    // that must be refused as they are built, not after.
    let mut s = format!("a: &big {}\nb: [", big(512 * 1024, 'x'));
    s.push_str(&["*big"; 100].join(", "));
    s.push_str("]\n");
    syntax_error(s.as_bytes(), Format::Yaml, &["strings total more than", &MAX_STRING_BYTES.to_string()]);
}

#[test]
fn deep_nesting_yaml_flow() {
    let _serial = serial();
    let s = format!("kind: Label\nspec: {}1{}\n", "[".repeat(10_000), "]".repeat(10_000));
    syntax_error(s.as_bytes(), Format::Yaml, &["nested deeper", &MAX_DEPTH.to_string()]);
    let s = format!("kind: Label\nspec: {}1{}\n", "{a: ".repeat(10_000), "}".repeat(10_000));
    syntax_error(s.as_bytes(), Format::Yaml, &["nested deeper", &MAX_DEPTH.to_string()]);
}

#[test]
fn deep_nesting_yaml_block() {
    let _serial = serial();
    // `- - - … x` nests a block sequence per dash on a single line.
    let s = format!("{}x\n", "- ".repeat(10_000));
    syntax_error(s.as_bytes(), Format::Yaml, &["nested deeper", &MAX_DEPTH.to_string()]);
    // Block mappings, one space of indentation per level (~50 MB at 10,000 levels, so the
    // body limit answers first); 2,000 levels stay under the body limit.
    let mut s = String::new();
    for i in 0..2_000 {
        s.push_str(&" ".repeat(i));
        s.push_str("a:\n");
    }
    syntax_error(s.as_bytes(), Format::Yaml, &["nested deeper", &MAX_DEPTH.to_string()]);
}

#[test]
fn deep_nesting_json() {
    let _serial = serial();
    let s = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    syntax_error(s.as_bytes(), Format::Json, &["nested deeper", &MAX_DEPTH.to_string()]);
    let s = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    syntax_error(s.as_bytes(), Format::Json, &["nested deeper", &MAX_DEPTH.to_string()]);
    // Unclosed: the parser must stop at the limit, not read to the end first.
    let s = "[".repeat(1_000_000);
    syntax_error(s.as_bytes(), Format::Json, &["nested deeper"]);
}

#[test]
fn just_deep_enough_is_accepted() {
    let _serial = serial();
    // MAX_DEPTH levels in all, counting the document itself and the final scalar.
    let nested = MAX_DEPTH - 4; // document, spec, metadata, key: then the nested arrays
    let s = format!(
        "kind: Application\nmetadata: {{name: a}}\nspec: {{label: l, metadata: {{K: {}1{}}}}}\n",
        "[".repeat(nested),
        "]".repeat(nested)
    );
    parse_manifests(s.as_bytes(), Format::Yaml).unwrap_or_else(|e| panic!("{e:?}"));
    let s = format!(
        "kind: Application\nmetadata: {{name: a}}\nspec: {{label: l, metadata: {{K: {}1{}}}}}\n",
        "[".repeat(nested + 1),
        "]".repeat(nested + 1)
    );
    syntax_error(s.as_bytes(), Format::Yaml, &["nested deeper"]);
}

#[test]
fn fifty_megabyte_scalar() {
    let _serial = serial();
    let payload = big(50 * 1024 * 1024, 'x');
    let yaml = format!("kind: User\nmetadata: {{name: u}}\nspec: {{password: {payload}}}\n");
    syntax_error(yaml.as_bytes(), Format::Yaml, &["body is", &MAX_BODY_BYTES.to_string()]);
    let json = format!(r#"{{"kind":"User","metadata":{{"name":"u"}},"spec":{{"password":"{payload}"}}}}"#);
    syntax_error(json.as_bytes(), Format::Json, &["body is", &MAX_BODY_BYTES.to_string()]);
}

#[test]
fn scalar_over_its_own_limit_under_the_body_limit() {
    let _serial = serial();
    let payload = big(MAX_SCALAR_BYTES + 1, 'x');
    let yaml = format!("kind: Application\nmetadata: {{name: a}}\nspec: {{label: l, metadata: {{K: {payload}}}}}\n");
    syntax_error(yaml.as_bytes(), Format::Yaml, &["string is", &MAX_SCALAR_BYTES.to_string()]);
    let yaml =
        format!("kind: Application\nmetadata: {{name: a}}\nspec: {{label: l, metadata: {{K: |\n  {payload}\n}}}}\n");
    let _ = refused(yaml.as_bytes(), Format::Yaml);
    let json = format!(r#"{{"kind":"Application","spec":{{"label":"l","metadata":{{"K":"{payload}"}}}}}}"#);
    syntax_error(json.as_bytes(), Format::Json, &["string is", &MAX_SCALAR_BYTES.to_string()]);
    // Exactly at the limit is fine.
    let payload = big(MAX_SCALAR_BYTES, 'x');
    let json = format!(
        r#"{{"kind":"Application","metadata":{{"name":"a"}},"spec":{{"label":"l","metadata":{{"K":"{payload}"}}}}}}"#
    );
    parse_manifests(json.as_bytes(), Format::Json).unwrap_or_else(|e| panic!("{e:?}"));
}

#[test]
fn many_large_scalars_under_the_body_limit() {
    let _serial = serial();
    // Nine 1 MiB strings: each within its limit, the body within its limit, so accepted.
    let payload = big(MAX_SCALAR_BYTES - 16, 'x');
    let values: Vec<String> = (0..9).map(|i| format!("\"K{i}\":\"{payload}\"")).collect();
    let json = format!(
        r#"{{"kind":"Application","metadata":{{"name":"a"}},"spec":{{"label":"l","metadata":{{{}}}}}}}"#,
        values.join(",")
    );
    let start = CpuTimer::start();
    parse_manifests(json.as_bytes(), Format::Json).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());
}

#[test]
fn one_megabyte_key() {
    let _serial = serial();
    let key = big(1024 * 1024, 'k');
    let json = format!(r#"{{"kind":"Label","{key}":1}}"#);
    syntax_error(json.as_bytes(), Format::Json, &["key is", &MAX_KEY_BYTES.to_string()]);
    // As a plain YAML key the scanner gives up on it; quoted or explicit, our limit does.
    let yaml = format!("kind: Label\n{key}: 1\n");
    let _ = refused(yaml.as_bytes(), Format::Yaml);
    let yaml = format!("kind: Label\n\"{key}\": 1\n");
    let _ = refused(yaml.as_bytes(), Format::Yaml);
    let yaml = format!("kind: Label\n? {key}\n: 1\n");
    syntax_error(yaml.as_bytes(), Format::Yaml, &["key is", &MAX_KEY_BYTES.to_string()]);
}

#[test]
fn duplicate_keys() {
    let _serial = serial();
    syntax_error(b"kind: Label\nkind: User\n", Format::Yaml, &["uplicate"]);
    syntax_error(b"kind: User\nmetadata: {name: a, name: b}\n", Format::Yaml, &["uplicate"]);
    syntax_error(br#"{"kind":"Label","kind":"User"}"#, Format::Json, &["duplicate key", "kind"]);
    syntax_error(br#"{"kind":"User","metadata":{"name":"a","name":"b"}}"#, Format::Json, &["duplicate key", "name"]);
}

#[test]
fn invalid_utf8() {
    let _serial = serial();
    for format in [Format::Yaml, Format::Json] {
        syntax_error(b"kind: User\nmetadata: {name: \xc3\x28}\n", format, &["UTF-8", "byte 28"]);
        syntax_error(b"\xff\xfe{}", format, &["UTF-8", "byte 0"]);
        // An overlong encoding of '/' and a lone surrogate.
        syntax_error(b"{\"kind\": \"\xc0\xaf\"}", format, &["UTF-8"]);
        syntax_error(b"{\"kind\": \"\xed\xa0\x80\"}", format, &["UTF-8"]);
    }
}

#[test]
fn wrong_types() {
    let _serial = serial();
    let yaml = Format::Yaml;
    invalid_field(b"kind: Label\nmetadata: {name: l}\nspec: {definitions: 5}\n", yaml, "spec.definitions");
    invalid_field(b"kind: User\nmetadata: x\n", yaml, "metadata");
    invalid_field(b"kind: User\nmetadata: {name: [a]}\n", yaml, "metadata.name");
    invalid_field(b"kind: User\nmetadata: {name: u}\nspec: {roles: [root]}\n", yaml, "spec.roles[0]");
    invalid_field(b"kind: User\nmetadata: {name: u}\nspec: {rateLimit: -1}\n", yaml, "spec.rateLimit");
    invalid_field(b"kind: Application\nmetadata: {name: a}\nspec: {label: l, lifetime: 5}\n", yaml, "spec.lifetime");
    invalid_field(b"kind: [Label]\n", yaml, "kind");
    invalid_field(b"- kind: User\n", yaml, "");
    invalid_field(br#"[1, "x", null, true]"#, Format::Json, "");
    invalid_field(br#"{"kind":"Label","metadata":{"name":"l"},"spec":{"definitions":[{"driver":"test","resources":{"cpu":4294967296}}]}}"#, Format::Json, "spec.definitions[0].resources.cpu");
    invalid_field(br#"{"kind":"Label","metadata":{"name":"l"},"spec":{"definitions":[{"driver":"test","resources":{"cpu":1.5}}]}}"#, Format::Json, "spec.definitions[0].resources.cpu");
    invalid_field(br#"{"apiVersion":"v2","kind":"User","metadata":{"name":"u"}}"#, Format::Json, "apiVersion");
}

#[test]
fn one_document_too_many() {
    let _serial = serial();
    let doc = "kind: User\nmetadata: {name: u}\n";
    let yaml = vec![doc; MAX_DOCUMENTS + 1].join("---\n");
    syntax_error(yaml.as_bytes(), Format::Yaml, &["too many documents", &MAX_DOCUMENTS.to_string()]);
    let json = format!("[{}]", vec![r#"{"kind":"User","metadata":{"name":"u"}}"#; MAX_DOCUMENTS + 1].join(","));
    syntax_error(json.as_bytes(), Format::Json, &["too many documents", &MAX_DOCUMENTS.to_string()]);
    // Exactly the limit is fine.
    let yaml = vec![doc; MAX_DOCUMENTS].join("---\n");
    let docs = parse_manifests(yaml.as_bytes(), Format::Yaml).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(docs.len(), MAX_DOCUMENTS);
}

#[test]
fn a_flood_of_tiny_documents() {
    let _serial = serial();
    // Nearly the body limit of document separators, of empty flow mappings, and of
    // JSON values: stopped by the document or node limits long before the end.
    let seps = "---\n".repeat(MAX_BODY_BYTES / 4 - 1);
    let start = CpuTimer::start();
    let e = parse_manifests(seps.as_bytes(), Format::Yaml);
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());
    match e {
        Err(ManifestError::Syntax { message, .. }) => {
            assert!(message.contains("documents"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let maps = "--- {}\n".repeat(MAX_BODY_BYTES / 8);
    syntax_error(maps.as_bytes(), Format::Yaml, &["too many documents"]);
    let json = format!("[{}0]", "0,".repeat(MAX_BODY_BYTES / 2 - 2));
    syntax_error(json.as_bytes(), Format::Json, &["too many nodes", &MAX_NODES.to_string()]);
    let json = format!("[{}[]]", "[],".repeat(MAX_BODY_BYTES / 3 - 2));
    syntax_error(json.as_bytes(), Format::Json, &["too many nodes", &MAX_NODES.to_string()]);
    let yaml = format!("[{}0]", "0,".repeat(MAX_BODY_BYTES / 2 - 2));
    syntax_error(yaml.as_bytes(), Format::Yaml, &["too many nodes", &MAX_NODES.to_string()]);
}

#[test]
fn tabs_and_odd_indentation() {
    let _serial = serial();
    let _ = refused(b"kind: Label\nspec:\n\tdefinitions: []\n", Format::Yaml);
    let _ = refused(b"kind: Label\nspec:\n  definitions:\n    - driver: test\n   resources: {}\n", Format::Yaml);
    let _ = refused(b"kind: Label\n  metadata: {name: l}\n", Format::Yaml);
    let _ = refused(b"kind: Label\nmetadata:\n    name: l\n  spec: {}\n", Format::Yaml);
}

#[test]
fn nul_bytes() {
    let _serial = serial();
    syntax_error(b"kind: User\x00\nmetadata: {name: u}\n", Format::Yaml, &["invalid YAML"]);
    syntax_error(b"\x00", Format::Yaml, &["invalid YAML"]);
    syntax_error(b"{\"kind\": \"User\x00\"}", Format::Json, &["invalid JSON"]);
    syntax_error(b"{\"kind\": \"User\"}\x00", Format::Json, &["invalid JSON"]);
    // Escaped NULs parse, and then fail where a name or kind is checked.
    invalid_field(b"kind: User\nmetadata: {name: \"u\\0\"}\n", Format::Yaml, "metadata.name");
    invalid_field(br#"{"kind":"User\u0000"}"#, Format::Json, "kind");
}

#[test]
fn empty_and_null_bodies() {
    let _serial = serial();
    for body in [&b""[..], b"   \n", b"---\n", b"~\n", b"null", b"# only a comment\n"] {
        syntax_error(body, Format::Yaml, &["no documents"]);
    }
    syntax_error(b"[]", Format::Json, &["no documents"]);
    syntax_error(b"", Format::Json, &["invalid JSON"]);
    syntax_error(b"{} {}", Format::Json, &["trailing"]);
}

#[test]
fn unusual_yaml_features_do_not_sneak_through() {
    let _serial = serial();
    // Tags, big integers, non-finite floats, merge keys and complex keys: each is either
    // read as plain data or refused, never a panic.
    for body in [
        "kind: !!binary SGVsbG8=\n",
        "kind: !custom Label\n",
        "kind: User\nmetadata: {name: u}\nspec: {rateLimit: 99999999999999999999999999999}\n",
        "kind: Application\nmetadata: {name: a}\nspec: {label: l, metadata: {K: .nan, L: -.inf}}\n",
        "base: &b {kind: User}\ndoc: {<<: *b}\n",
        "? [a, b]\n: c\n",
        "? {a: b}\n: c\n",
        "%YAML 1.2\n%TAG ! tag:x,2000:\n--- !x\nkind: User\n",
        "&a [*a]\n",
    ] {
        let start = CpuTimer::start();
        let r = parse_manifests(body.as_bytes(), Format::Yaml);
        assert!(start.elapsed() < LIMIT);
        if let Ok(docs) = r {
            assert!(docs.iter().all(|d| matches!(d, Manifest::Application(_))), "{body:?} gave {docs:?}");
        }
    }
}

#[test]
fn honest_aliases_are_accepted() {
    let _serial = serial();
    // One anchored resources block reused by 50 definitions.
    let mut s = String::from(
        "kind: Label\nmetadata: {name: l}\nspec:\n  definitions:\n    - driver: test\n      resources: &r {cpu: 1, ram: 1, lifetime: 1h, nodeFilter: [a, b, c]}\n",
    );
    for _ in 0..49 {
        s.push_str("    - driver: test\n      resources: *r\n");
    }
    let start = CpuTimer::start();
    let docs = parse_manifests(s.as_bytes(), Format::Yaml).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(start.elapsed() < LIMIT);
    let Manifest::Label(l) = &docs[0] else { panic!("not a label") };
    assert_eq!(l.spec.definitions.len(), 50);
    assert!(l.spec.definitions.iter().all(|d| d.resources.node_filter.len() == 3));
}
