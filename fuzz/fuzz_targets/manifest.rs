//! Arbitrary bytes into `parse_manifests`, as YAML and as JSON. Beyond "no panic", every
//! body that parses must be valid, and must come back equal after `get -o json` and
//! `get -o yaml` (serialize, parse again): fishctl relies on that to re-apply output.

#![no_main]

use api_types::{Format, Manifest, Validate, parse_manifests};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Yaml, Format::Json] {
        let Ok(docs) = parse_manifests(data, format) else { continue };
        assert!(!docs.is_empty(), "parsed to no documents");
        let values: Vec<Value> = docs.iter().map(to_json).collect();
        for (doc, value) in docs.iter().zip(&values) {
            assert_eq!(valid(doc), Ok(()), "{doc:?} was parsed but does not validate");
            let json = serde_json::to_vec(value).expect("a manifest serializes to JSON");
            let back = parse_manifests(&json, Format::Json)
                .unwrap_or_else(|e| panic!("{doc:?} as JSON {value} does not parse again: {e:?}"));
            assert_eq!(back.as_slice(), std::slice::from_ref(doc), "JSON round trip of {value}");
            let yaml = serde_saphyr::to_string(value).expect("a manifest serializes to YAML");
            let back = parse_manifests(yaml.as_bytes(), Format::Yaml)
                .unwrap_or_else(|e| panic!("{doc:?} as YAML {yaml:?} does not parse again: {e:?}"));
            assert_eq!(back.as_slice(), std::slice::from_ref(doc), "YAML round trip of {yaml:?}");
        }
        // All of them at once, as one JSON array, as `fishctl apply` may send them.
        let json = serde_json::to_vec(&values).expect("documents serialize to JSON");
        let back = parse_manifests(&json, Format::Json).unwrap_or_else(|e| panic!("array does not parse: {e:?}"));
        assert_eq!(back, docs, "JSON array round trip");
    }
});

fn to_json(m: &Manifest) -> Value {
    match m {
        Manifest::Label(l) => serde_json::to_value(l),
        Manifest::Application(a) => serde_json::to_value(a),
        Manifest::User(u) => serde_json::to_value(u),
    }
    .expect("a manifest serializes to a JSON value")
}

fn valid(m: &Manifest) -> Result<(), Vec<api_types::FieldError>> {
    match m {
        Manifest::Label(l) => l.validate(),
        Manifest::Application(a) => a.validate(),
        Manifest::User(u) => u.validate(),
    }
}
