//! Small statistics helpers.

/// Median of the values (mean of the middle two for an even count); `None`
/// when empty. NaNs are ignored.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b` when both exist and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// A figure of each result, in the `order` of their names: `None` where
/// no result has the name or the result has no such figure.
pub fn by_name<R>(
    order: &[&str],
    results: &[R],
    name: impl Fn(&R) -> &str,
    get: impl Fn(&R) -> Option<f64>,
) -> Vec<Option<f64>> {
    order
        .iter()
        .map(|n| results.iter().find(|r| name(r) == *n).and_then(&get))
        .collect()
}

/// `{name: value}` for the names in `order` and the values of `v`: the
/// per-path part of a figure in a JSON summary.
pub fn named(order: &[&str], v: &[Option<f64>]) -> serde_json::Map<String, serde_json::Value> {
    order
        .iter()
        .zip(v)
        .map(|(n, x)| ((*n).to_string(), serde_json::json!(x)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([]), None);
        assert_eq!(median([3.0]), Some(3.0));
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn figures_by_name() {
        let results = [("b", Some(2.0)), ("a", None), ("c", Some(3.0))];
        let v = by_name(&["a", "b", "x"], &results, |r| r.0, |r| r.1);
        assert_eq!(v, [None, Some(2.0), None]);
        let m = named(&["a", "b", "x"], &v);
        assert_eq!(
            serde_json::Value::Object(m),
            serde_json::json!({"a": null, "b": 2.0, "x": null})
        );
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
