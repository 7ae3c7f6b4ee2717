//! `${values.NAME}` and `${region}` in scalars.
//!
//! A scalar that is exactly `${values.NAME}` (quoted or not) takes the value's type, so
//! `replicas: ${values.web_replicas}` is an integer. Inside a longer string a value is written out
//! as text. `${region}` stays in place: the rendered stack serves every region of an environment,
//! and [`crate::model::Stack::service_for_region`] substitutes it per wave. Any other `${…}` is an
//! error. There is no escape: a `$` not followed by `{` is an ordinary character.

use super::names::did_you_mean;
use super::{Value, ValueKind, Values};

/// The literal kept for the region template.
pub const REGION: &str = "${region}";

/// A scalar after substitution.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// The new text.
    pub text: String,
    /// Whether the text reads like a plain (untyped) YAML scalar: true only when a whole-scalar
    /// `${values.NAME}` brought in a number or bool.
    pub plain: bool,
    /// `${values.NAME}` when the whole scalar came from one value, for error messages.
    pub from: Option<String>,
    /// Whether `${region}` remains in the text.
    pub has_region: bool,
}

/// Substitutes `${values.NAME}` in `text`. `Ok(None)` when there is nothing to substitute.
pub fn expand(text: &str, values: &Values) -> Result<Option<Expansion>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    if let Some(name) = text
        .strip_prefix("${values.")
        .and_then(|r| r.strip_suffix('}'))
        .filter(|n| !n.contains(['{', '}']))
    {
        let value = lookup(name, values)?;
        let (text, typed_plain) = value_text(value);
        let has_region = !typed_plain && text.contains(REGION);
        return Ok(Some(Expansion {
            text,
            plain: typed_plain,
            from: Some(format!("${{values.{name}}}")),
            has_region,
        }));
    }
    let mut out = String::with_capacity(text.len());
    let mut has_region = false;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {}", super::scalar::quote(text)))?;
        let inner = &after[..end];
        if inner == "region" {
            out.push_str(REGION);
            has_region = true;
        } else if let Some(name) = inner.strip_prefix("values.") {
            let (t, _) = value_text(lookup(name, values)?);
            has_region |= t.contains(REGION);
            out.push_str(&t);
        } else {
            return Err(format!(
                "unknown template `${{{inner}}}`: expected `${{values.NAME}}` or `${{region}}`"
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(Expansion {
        text: out,
        plain: false,
        from: None,
        has_region,
    }))
}

/// Checks a string that is not expanded (a value's default): only `${region}` may appear.
pub fn check_literal(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {}", super::scalar::quote(text)))?;
        let inner = &after[..end];
        if inner != "region" {
            return Err(format!(
                "`${{{inner}}}` cannot be used here: a value may contain `${{region}}` but no other template"
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

fn lookup<'v>(name: &str, values: &'v Values) -> Result<&'v Value, String> {
    values.get(name).ok_or_else(|| {
        format!(
            "unknown value `{name}` in `${{values.{name}}}`{}",
            did_you_mean(name, values.keys().map(String::as_str))
        )
    })
}

/// A value as text, and whether that text is a typed plain scalar.
fn value_text(v: &Value) -> (String, bool) {
    match &v.kind {
        ValueKind::Int(i) => (i.to_string(), true),
        ValueKind::Bool(b) => (b.to_string(), true),
        ValueKind::Float(text) => (text.clone(), true),
        ValueKind::Str(s) => (s.clone(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Pos;

    fn values() -> Values {
        let v = |kind| Value {
            kind,
            pos: Pos::default(),
        };
        Values::from([
            ("n".to_string(), v(ValueKind::Int(3))),
            ("name".to_string(), v(ValueKind::Str("shop".into()))),
            ("zone".to_string(), v(ValueKind::Str("${region}-a".into()))),
        ])
    }

    #[test]
    fn whole_scalars_take_the_value_type() {
        let e = expand("${values.n}", &values()).unwrap().unwrap();
        assert_eq!((e.text.as_str(), e.plain), ("3", true));
        assert_eq!(e.from.as_deref(), Some("${values.n}"));
        let e = expand("${values.name}", &values()).unwrap().unwrap();
        assert_eq!((e.text.as_str(), e.plain), ("shop", false));
    }

    #[test]
    fn embedded_values_are_stringified_and_region_stays() {
        let e = expand("v${values.n}-${region}", &values())
            .unwrap()
            .unwrap();
        assert_eq!(e.text, "v3-${region}");
        assert!(!e.plain && e.has_region);
        let e = expand("${values.zone}", &values()).unwrap().unwrap();
        assert!(e.has_region);
        assert_eq!(expand("no templates $HOME", &values()), Ok(None));
    }

    #[test]
    fn unknown_templates_are_errors() {
        let e = expand("${values.nme}", &values()).unwrap_err();
        assert!(e.contains("did you mean `name`?"), "{e}");
        assert!(expand("${HOME}", &values())
            .unwrap_err()
            .contains("unknown template `${HOME}`"));
        assert!(expand("x${values.n", &values())
            .unwrap_err()
            .contains("unterminated"));
        assert!(check_literal("a-${region}").is_ok());
        assert!(check_literal("${values.n}").is_err());
    }
}
