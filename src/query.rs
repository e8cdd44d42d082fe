//! Query strings: decoding one `key=value` component as Go's
//! `url.QueryUnescape` does (`+` is a space, `%XX` a byte).

/// Percent-decodes a query component; a malformed escape stays as written.
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(value) => {
                    out.push(value);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn components_decode_like_go() {
        assert_eq!(decode("sh+-c"), "sh -c");
        assert_eq!(decode("a%3Bb%20c"), "a;b c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
