//! Writing results: Markdown tables for people, a small JSON value type
//! (and its pretty-printer) for tools, the sections and JSON shapes the
//! benchmarks' reports share (environment, notes, failures, a series of
//! samples with its summaries), and the files `NAME.md` and `NAME.json`
//! in the output directory. No serde: the few shapes a report has do not
//! justify the build time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::stats::{self, Metric, Outcome, Summary};

/// A JSON value. Objects keep their keys in insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(key, value)` pairs.
    pub fn obj<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A number, or null for None.
    pub fn opt(v: Option<f64>) -> Json {
        v.map_or(Json::Null, Json::Num)
    }

    /// A string, or null for None.
    pub fn opt_str(v: Option<&str>) -> Json {
        v.map_or(Json::Null, Json::str)
    }

    /// Pretty-printed with two-space indentation.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| out.extend(std::iter::repeat_n("  ", d));
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            // Three decimals is a microsecond for milliseconds; JSON has no NaN.
            Json::Num(n) if n.is_finite() => {
                let s = format!("{:.3}", n);
                let s = s.trim_end_matches('0').trim_end_matches('.');
                out.push_str(if s == "-0" { "0" } else { s });
            }
            Json::Num(_) => out.push_str("null"),
            Json::Str(s) => escape(out, s),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(out, depth + 1);
                    item.write(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push(']');
            }
            Json::Obj(pairs) if pairs.is_empty() => out.push_str("{}"),
            Json::Obj(pairs) => {
                out.push_str("{\n");
                for (i, (k, v)) in pairs.iter().enumerate() {
                    pad(out, depth + 1);
                    escape(out, k);
                    out.push_str(": ");
                    v.write(out, depth + 1);
                    out.push_str(if i + 1 < pairs.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

fn escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A Markdown table: a header row and rows of cells (`|` is escaped).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} |",
        header
            .iter()
            .map(|h| cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} |",
            row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out
}

/// The `## Environment` section: a table of what and value.
pub fn environment(env: &[(String, String)]) -> String {
    let rows: Vec<Vec<String>> = env
        .iter()
        .map(|(k, v)| vec![k.clone(), format!("`{v}`")])
        .collect();
    format!("\n## Environment\n\n{}", table(&["what", "value"], &rows))
}

/// The environment as a JSON object.
pub fn environment_json(env: &[(String, String)]) -> Json {
    Json::obj(env.iter().map(|(k, v)| (k.as_str(), Json::str(v.as_str()))))
}

/// Strings as a JSON array.
pub fn strings_json(v: &[String]) -> Json {
    Json::Arr(v.iter().map(|n| Json::str(n.as_str())).collect())
}

/// The `## Notes` section, one item a note; nothing without notes.
pub fn notes(md: &mut String, notes: &[String]) {
    if !notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
}

/// The `## Failures` section: `- LABEL run N: ERROR` for every failed
/// run of every (label, samples) group; nothing when none failed.
pub fn failures<'a, S: Outcome + 'a>(
    md: &mut String,
    groups: impl IntoIterator<Item = (String, &'a [S])>,
) {
    let mut lines = Vec::new();
    for (label, samples) in groups {
        for x in samples {
            if let Some(e) = x.error() {
                let run = x.run();
                lines.push(if label.is_empty() {
                    format!("- run {run}: {e}")
                } else {
                    format!("- {label} run {run}: {e}")
                });
            }
        }
    }
    if !lines.is_empty() {
        md.push_str("\n## Failures\n\n");
        md.push_str(&lines.join("\n"));
        md.push('\n');
    }
}

/// One run as JSON: `run`, every metric, the `extra` fields, `error`.
pub fn sample_json<S: Outcome>(
    x: &S,
    metrics: impl IntoIterator<Item = Metric<S>>,
    extra: Vec<(&'static str, Json)>,
) -> Json {
    let mut o: Vec<(String, Json)> = vec![("run".into(), Json::Num(x.run() as f64))];
    for (k, f) in metrics {
        o.push((k.into(), Json::opt(f(x))));
    }
    o.extend(extra.into_iter().map(|(k, v)| (k.into(), v)));
    o.push(("error".into(), Json::opt_str(x.error())));
    Json::Obj(o)
}

/// A series as JSON: the `head` fields, the summary of every metric over
/// the runs that did not fail, and `samples` (`sample_json`, with
/// `extra(sample)`).
pub fn series_json<S: Outcome>(
    head: Vec<(&'static str, Json)>,
    samples: &[S],
    metrics: &[Metric<S>],
    extra: impl Fn(&S) -> Vec<(&'static str, Json)>,
) -> Json {
    let mut o: Vec<(String, Json)> = head.into_iter().map(|(k, v)| (k.into(), v)).collect();
    for &(k, f) in metrics {
        o.push((k.into(), Summary::json(stats::summarise(samples, f))));
    }
    let samples = samples
        .iter()
        .map(|x| sample_json(x, metrics.iter().copied(), extra(x)))
        .collect();
    o.push(("samples".into(), Json::Arr(samples)));
    Json::Obj(o)
}

/// Prints the Markdown to stdout, writes both files (`write`) and says
/// where on stderr, as `[NAME] wrote ...`.
pub fn publish(dir: &Path, name: &str, markdown: &str, json: &Json) -> Result<(), String> {
    println!("{markdown}");
    let [md, js] = write(dir, name, markdown, json)?;
    eprintln!("[{name}] wrote {} and {}", md.display(), js.display());
    Ok(())
}

/// Writes `DIR/NAME.md` and `DIR/NAME.json`, creating DIR; returns both paths.
pub fn write(dir: &Path, name: &str, markdown: &str, json: &Json) -> Result<[PathBuf; 2], String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let md = dir.join(format!("{name}.md"));
    let js = dir.join(format!("{name}.json"));
    std::fs::write(&md, markdown).map_err(|e| format!("cannot write {}: {e}", md.display()))?;
    std::fs::write(&js, json.pretty())
        .map_err(|e| format!("cannot write {}: {e}", js.display()))?;
    Ok([md, js])
}

/// Now as an ISO 8601 UTC timestamp, from the system clock.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_prints_and_escapes() {
        let v = Json::obj([
            ("a", Json::Num(1.5)),
            (
                "b",
                Json::Arr(vec![Json::Null, Json::Bool(true), Json::Num(2.0)]),
            ),
            ("c", Json::str("x\"y\n")),
            ("d", Json::Num(f64::NAN)),
            ("e", Json::Obj(vec![])),
        ]);
        assert_eq!(
            v.pretty(),
            "{\n  \"a\": 1.5,\n  \"b\": [\n    null,\n    true,\n    2\n  ],\n  \"c\": \"x\\\"y\\n\",\n  \"d\": null,\n  \"e\": {}\n}\n"
        );
    }

    #[test]
    fn markdown_table() {
        let t = table(&["a", "b"], &[vec!["1".into(), "x|y".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | x\\|y |\n");
    }

    #[test]
    fn timestamp_shape() {
        let t = utc_now();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
