//! The canonical JSON form that signatures cover: object keys sorted by their
//! UTF-8 bytes, no insignificant whitespace, strings escaped as serde_json
//! escapes them. It is written by hand rather than relying on serde_json's map
//! ordering, because a dependency enabling `preserve_order` anywhere in the
//! build would silently change the bytes and break every signature.

use serde_json::Value;

/// Appends the canonical form of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            // Scalars: serde_json's compact output is already canonical.
            serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing to a Vec cannot fail");
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sorts_keys_at_every_depth() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": null, "x": "é\n"}], "c": true}});
        assert_eq!(canon(v), r#"{"a":{"c":true,"z":[1,{"x":"é\n","y":null}]},"b":1}"#);
    }

    #[test]
    fn is_stable_through_a_parse() {
        let v = json!({"k": "quote \" and \\ and \u{1}", "n": -12, "f": 1.5});
        let once = canon(v);
        let again = canon(serde_json::from_str(&once).unwrap());
        assert_eq!(once, again);
    }
}
