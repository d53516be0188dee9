//! Lenient readers for JSON from Salesforce and WHMCS, where ids and counts arrive as numbers,
//! as strings of digits, as floats (`12.0` from a Salesforce Number field) or as comma lists.
//!
//! The `opt_*` functions are serde `deserialize_with` adapters for record types:
//! `#[serde(default, deserialize_with = "fulfillment_sdk::json::opt_text")]`.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Largest integer an `f64` holds exactly.
const MAX_EXACT_F64: f64 = 9_007_199_254_740_992.0;

/// A non-negative whole number from `12`, `12.0`, `"12"`, `" 12 "` or `"12.0"`; `None` otherwise.
pub fn u64_from(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().and_then(whole_f64)),
        Value::String(s) => u64_from_str(s),
        _ => None,
    }
}

/// [`u64_from`] for text: `"12"`, `" 12 "` and `"12.0"` give 12; anything else `None`.
pub fn u64_from_str(s: &str) -> Option<u64> {
    let s = s.trim();
    s.parse::<u64>()
        .ok()
        .or_else(|| s.parse::<f64>().ok().and_then(whole_f64))
}

fn whole_f64(f: f64) -> Option<u64> {
    if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= MAX_EXACT_F64 {
        // Exact: whole, non-negative and within f64's exact integer range.
        Some(f as u64)
    } else {
        None
    }
}

/// A number from a JSON number or a numeric string.
pub fn f64_from(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Ids from a comma list (`"1,2, 3"`), an array (`[1,"2"]`) or a single number/string.
/// Empty strings and `null` give an empty list; elements that are not ids are skipped.
pub fn u64_list_from(value: &Value) -> Vec<u64> {
    match value {
        Value::Array(items) => items.iter().filter_map(u64_from).collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .filter_map(u64_from_str)
            .collect(),
        other => u64_from(other).into_iter().collect(),
    }
}

/// Text from a string (trimmed) or a number (a whole float loses its `.0`); blank and `null`
/// give `None`. Salesforce returns a Number field as `42.0` and a Text field as `"42"`.
pub fn text_from(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(match n.as_f64().and_then(whole_f64) {
            Some(whole) if n.is_f64() => whole.to_string(),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

/// serde adapter: [`text_from`] on an optional field.
pub fn opt_text<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Value>::deserialize(de)?
        .as_ref()
        .and_then(text_from))
}

/// serde adapter: [`f64_from`] on an optional field.
pub fn opt_f64<'de, D: Deserializer<'de>>(de: D) -> Result<Option<f64>, D::Error> {
    Ok(Option::<Value>::deserialize(de)?
        .as_ref()
        .and_then(f64_from))
}

/// serde adapter: [`u64_from`] on an optional field.
pub fn opt_u64<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Value>::deserialize(de)?
        .as_ref()
        .and_then(u64_from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_from_numbers_and_strings() {
        assert_eq!(u64_from(&json!(1042)), Some(1042));
        assert_eq!(u64_from(&json!("1042")), Some(1042));
        assert_eq!(u64_from(&json!(" 7 ")), Some(7));
        assert_eq!(u64_from(&json!(12.0)), Some(12));
        assert_eq!(u64_from(&json!("12.0")), Some(12));
        assert_eq!(u64_from(&json!(12.5)), None);
        assert_eq!(u64_from(&json!(-1)), None);
        assert_eq!(u64_from(&json!("")), None);
        assert_eq!(u64_from(&json!("abc")), None);
        assert_eq!(u64_from(&json!(null)), None);
        assert_eq!(u64_from(&json!(1e300)), None);
    }

    #[test]
    fn id_lists_from_comma_text_arrays_and_scalars() {
        assert_eq!(u64_list_from(&json!("1,2, 3")), vec![1, 2, 3]);
        assert_eq!(u64_list_from(&json!("5")), vec![5]);
        assert_eq!(u64_list_from(&json!(5)), vec![5]);
        assert_eq!(u64_list_from(&json!([1, "2", "x"])), vec![1, 2]);
        assert_eq!(u64_list_from(&json!("")), Vec::<u64>::new());
        assert_eq!(u64_list_from(&json!("1,,2,")), vec![1, 2]);
        assert_eq!(u64_list_from(&json!(null)), Vec::<u64>::new());
    }

    #[test]
    fn text_from_strings_and_numbers() {
        assert_eq!(text_from(&json!(" 42 ")), Some("42".into()));
        assert_eq!(text_from(&json!(42.0)), Some("42".into()));
        assert_eq!(text_from(&json!(42)), Some("42".into()));
        assert_eq!(text_from(&json!(4.5)), Some("4.5".into()));
        assert_eq!(text_from(&json!("")), None);
        assert_eq!(text_from(&json!(null)), None);
        assert_eq!(text_from(&json!(true)), None);
    }

    #[test]
    fn floats_from_numbers_and_strings() {
        assert_eq!(f64_from(&json!(2)), Some(2.0));
        assert_eq!(f64_from(&json!("2.5")), Some(2.5));
        assert_eq!(f64_from(&json!("NaN")), None);
        assert_eq!(f64_from(&json!([])), None);
    }

    #[derive(serde::Deserialize)]
    struct Rec {
        #[serde(default, deserialize_with = "opt_text")]
        a: Option<String>,
        #[serde(default, deserialize_with = "opt_u64")]
        b: Option<u64>,
    }

    #[test]
    fn serde_adapters_tolerate_missing_null_and_mixed() -> Result<(), serde_json::Error> {
        let r: Rec = serde_json::from_str(r#"{"a": 7.0, "b": "9"}"#)?;
        assert_eq!((r.a.as_deref(), r.b), (Some("7"), Some(9)));
        let r: Rec = serde_json::from_str(r#"{"a": null}"#)?;
        assert_eq!((r.a, r.b), (None, None));
        Ok(())
    }
}
