use super::*;
use proptest::prelude::*;

#[test]
fn clean_paths_pass_unchanged_and_borrowed() {
    for raw in [
        "/",
        "/api",
        "/api/v1/namespaces/default/pods",
        "/apis/apps/v1",
    ] {
        let path = normalize(raw).unwrap();
        assert_eq!(path.as_str(), raw);
        assert!(matches!(path.encoded(), Cow::Borrowed(_)));
    }
}

#[test]
fn escapes_are_decoded_once_and_reencoded_canonically() {
    let path = normalize("/api/v1/namespaces/d%65fault/pods").unwrap();
    assert_eq!(path.as_str(), "/api/v1/namespaces/default/pods");
    assert_eq!(path.encoded(), "/api/v1/namespaces/default/pods");

    let literal = normalize("/api/v1/namespaces/a%252e/pods").unwrap();
    assert_eq!(literal.as_str(), "/api/v1/namespaces/a%2e/pods");
    assert_eq!(literal.encoded(), "/api/v1/namespaces/a%252e/pods");

    let space = normalize("/api/a%20b").unwrap();
    assert_eq!(space.as_str(), "/api/a b");
    assert_eq!(space.encoded(), "/api/a%20b");
}

#[test]
fn ambiguous_paths_are_refused() {
    let cases = [
        ("api", PathError::NotAbsolute),
        ("/api/./v1", PathError::DotSegment),
        ("/api/v1/..", PathError::DotSegment),
        ("/api//v1", PathError::EmptySegment),
        ("/api/v1/", PathError::EmptySegment),
        ("/api/v1%2Fpods", PathError::EncodedSeparator('/')),
        ("/api/v1/%2e%2e/x", PathError::EncodedSeparator('.')),
        ("/api/v1/%2E", PathError::EncodedSeparator('.')),
        ("/api/v1%5cpods", PathError::EncodedSeparator('\\')),
        ("/api/v1%00", PathError::EncodedSeparator('\0')),
        ("/api\\v1", PathError::ForbiddenCharacter),
        ("/api/%0a", PathError::ForbiddenCharacter),
        ("/api/%zz", PathError::BadEscape),
        ("/api/%4", PathError::BadEscape),
        ("/api/%ff", PathError::InvalidUtf8),
    ];
    for (raw, expected) in cases {
        assert_eq!(normalize(raw).unwrap_err(), expected, "{raw}");
    }
    let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
    assert_eq!(normalize(&long).unwrap_err(), PathError::TooLong);
}

proptest! {
    #[test]
    fn never_panics(raw in ".{0,64}") {
        let _ = normalize(&raw);
    }

    #[test]
    fn never_panics_on_paths_with_escapes(raw in "/([a-z.%/\\\\0-9A-F]){0,40}") {
        let _ = normalize(&raw);
    }

    #[test]
    fn is_idempotent(raw in "/([a-zA-Z0-9._~%-]{1,8}/){0,5}[a-z]{1,8}") {
        if let Ok(once) = normalize(&raw) {
            let encoded = once.encoded();
            let twice = normalize(&encoded).unwrap();
            prop_assert_eq!(twice.as_str(), once.as_str());
            prop_assert_eq!(twice.encoded(), encoded.clone());
        }
    }

    #[test]
    fn output_has_no_dot_or_empty_segments(raw in "/([a-z.%2eE/]){0,30}") {
        if let Ok(path) = normalize(&raw)
            && path.as_str() != "/"
        {
            for segment in path.as_str()[1..].split('/') {
                prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
            }
        }
    }

    #[test]
    fn every_spelling_decodes_to_the_same_path(
        segments in proptest::collection::vec("[a-z0-9-]{1,8}", 1..6),
        mask in any::<u64>(),
    ) {
        // Percent-encode an arbitrary selection of the characters.
        let plain = format!("/{}", segments.join("/"));
        let mut spelled = String::new();
        for (i, c) in plain.chars().enumerate() {
            if c != '/' && mask >> (i % 64) & 1 == 1 {
                spelled.push_str(&format!("%{:02x}", c as u32));
            } else {
                spelled.push(c);
            }
        }
        let path = normalize(&spelled).unwrap();
        prop_assert_eq!(path.as_str(), plain.as_str());
        prop_assert_eq!(path.encoded(), plain.as_str());
    }
}
