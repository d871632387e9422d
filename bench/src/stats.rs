//! Summaries of repeated measurements: median, min and max (noisy shared
//! machines make means misleading, so no mean or standard deviation),
//! over the runs that did not fail, and their table cells.

use crate::report::Json;

/// Median, min and max of `n` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// None for no values.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Summary {
            n: v.len(),
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    pub fn json(s: Option<Summary>) -> Json {
        match s {
            None => Json::Null,
            Some(s) => Json::obj([
                ("n", Json::Num(s.n as f64)),
                ("median", Json::Num(s.median)),
                ("min", Json::Num(s.min)),
                ("max", Json::Num(s.max)),
            ]),
        }
    }
}

/// One measured run, which may have failed.
pub trait Outcome {
    /// Its number, from 1.
    fn run(&self) -> usize;
    /// Why it failed, if it did.
    fn error(&self) -> Option<&str>;
}

/// Implements `Outcome` for a type with fields `run: usize` and
/// `error: Option<String>`.
macro_rules! outcome {
    ($t:ty) => {
        impl $crate::stats::Outcome for $t {
            fn run(&self) -> usize {
                self.run
            }
            fn error(&self) -> Option<&str> {
                self.error.as_deref()
            }
        }
    };
}
pub(crate) use outcome;

/// A named figure of a run.
pub type Metric<S> = (&'static str, fn(&S) -> Option<f64>);

/// The summary of `f` over the runs that did not fail.
pub fn summarise<S: Outcome>(samples: &[S], f: impl Fn(&S) -> Option<f64>) -> Option<Summary> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.error().is_none())
        .filter_map(f)
        .collect();
    Summary::of(&v)
}

/// The figure called `name` among `metrics` (none of any run if there is
/// no such figure).
pub fn metric<S>(metrics: &[Metric<S>], name: &str) -> fn(&S) -> Option<f64> {
    metrics
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(|_| None, |m| m.1)
}

/// "OK/ALL": the runs that did not fail, of all.
pub fn runs_ok<S: Outcome>(samples: &[S]) -> String {
    let failed = samples.iter().filter(|x| x.error().is_some()).count();
    format!("{}/{}", samples.len() - failed, samples.len())
}

/// `v` with `d` decimals, or "–".
pub fn cell(v: Option<f64>, d: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.d$}"))
}

/// The median with `d` decimals, or "–".
pub fn median_cell(s: Option<Summary>, d: usize) -> String {
    cell(s.map(|s| s.median), d)
}

/// "MIN–MAX" with `d` decimals, or "–".
pub fn range_cell(s: Option<Summary>, d: usize) -> String {
    s.map_or("–".into(), |x| format!("{:.d$}–{:.d$}", x.min, x.max))
}

/// "MEDIAN (MIN–MAX)" with `d` decimals, or "–".
pub fn median_range_cell(s: Option<Summary>, d: usize) -> String {
    s.map_or("–".into(), |x| {
        format!("{:.d$} ({:.d$}–{:.d$})", x.median, x.min, x.max)
    })
}

/// `a / b` when both exist and b is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        assert_eq!(Summary::of(&[]), None);
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn cells() {
        let s = Summary::of(&[1.0, 2.5, 4.0]);
        assert_eq!(median_cell(s, 1), "2.5");
        assert_eq!(range_cell(s, 0), "1–4");
        assert_eq!(median_range_cell(s, 2), "2.50 (1.00–4.00)");
        assert_eq!(median_cell(None, 2), "–");
        assert_eq!(cell(Some(2.0), 0), "2");
    }
}
