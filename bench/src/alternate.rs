//! The alternating runner the `blk`, `net` and `vsock` benchmarks share:
//! every case `runs` times per VMM, the VMMs one after the other with the
//! first one swapped every run, a case given up for a VMM after
//! `GIVE_UP_AFTER` failures in a row, a progress line per run on stderr.
//! Also the `Series` it returns and the utsuwa/QEMU ratio section the
//! reports make of them.

use std::time::Instant;

use crate::boot::Vmm;
use crate::report;
use crate::stats::{self, Metric, Outcome};

/// A case that failed this many times in a row is not run again.
pub const GIVE_UP_AFTER: usize = 3;

/// A sample the runner can make without running: a skipped run.
pub trait Sample: Outcome {
    /// Run `run`, not made because of `why`.
    fn skipped(run: usize, why: String) -> Self;
}

/// Implements `Outcome` and `Sample` for a `Default` type with fields
/// `run: usize` and `error: Option<String>`: a skipped run is the default
/// with those two set.
macro_rules! sample {
    ($t:ty) => {
        $crate::stats::outcome!($t);
        impl $crate::alternate::Sample for $t {
            // A type may have no fields besides the two.
            #[allow(clippy::needless_update)]
            fn skipped(run: usize, why: String) -> Self {
                Self {
                    run,
                    error: Some(why),
                    ..Default::default()
                }
            }
        }
    };
}
pub(crate) use sample;

/// Everything one VMM produced for one case.
#[derive(Debug, Clone)]
pub struct Series<C, S> {
    pub vmm: &'static str,
    pub case: C,
    pub samples: Vec<S>,
}

/// Whether the last `GIVE_UP_AFTER` samples all failed.
fn failing<S: Outcome>(samples: &[S]) -> bool {
    samples.len() >= GIVE_UP_AFTER
        && samples
            .iter()
            .rev()
            .take(GIVE_UP_AFTER)
            .all(|s| s.error().is_some())
}

/// Runs every case `runs` times per VMM with `one(vmm, case, run)`, VMMs
/// alternating (the first one swapped every run). After each run it
/// prints `[TAG] RUN/RUNS ` and what `progress(vmm, case, sample)` says
/// to stderr; at the end, how long it all took.
pub fn run<C: Copy, S: Sample>(
    tag: &str,
    runs: usize,
    vmms: &[Vmm],
    cases: &[C],
    mut one: impl FnMut(&Vmm, &C, usize) -> S,
    progress: impl Fn(&Vmm, &C, &S) -> String,
) -> Vec<Series<C, S>> {
    let mut series: Vec<Series<C, S>> = cases
        .iter()
        .flat_map(|case| {
            vmms.iter().map(|v| Series {
                vmm: v.name(),
                case: *case,
                samples: vec![],
            })
        })
        .collect();
    let index = |case: usize, vmm: usize| case * vmms.len() + vmm;
    let began = Instant::now();
    for run in 1..=runs {
        for (c, case) in cases.iter().enumerate() {
            let mut order: Vec<usize> = (0..vmms.len()).collect();
            if run % 2 == 0 {
                order.reverse();
            }
            for &v in &order {
                let vmm = &vmms[v];
                let s = if failing(&series[index(c, v)].samples) {
                    S::skipped(
                        run,
                        format!("skipped: the last {GIVE_UP_AFTER} runs failed"),
                    )
                } else {
                    one(vmm, case, run)
                };
                eprintln!("[{tag}] {run}/{runs} {}", progress(vmm, case, &s));
                series[index(c, v)].samples.push(s);
            }
        }
    }
    eprintln!(
        "[{tag}] timed runs done in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    series
}

/// The `## Ratios utsuwa / QEMU (medians)` section: a row per case both
/// ran, headed `case_heading` and named by `label`, then utsuwa's median
/// over QEMU's (two decimals) of each `(metric, heading)` of `columns`.
/// Writes nothing and returns false when no case has both.
pub fn ratio_section<C: PartialEq, S: Outcome>(
    md: &mut String,
    series: &[Series<C, S>],
    metrics: &[Metric<S>],
    case_heading: &str,
    columns: &[(&str, &str)],
    label: impl Fn(&C) -> String,
) -> bool {
    let mut rows = Vec::new();
    for s in series.iter().filter(|s| s.vmm == "utsuwa") {
        let Some(q) = series.iter().find(|q| q.vmm == "qemu" && q.case == s.case) else {
            continue;
        };
        let mut row = vec![label(&s.case)];
        row.extend(columns.iter().map(|(k, _)| {
            let f = stats::metric(metrics, k);
            match (
                stats::summarise(&s.samples, f),
                stats::summarise(&q.samples, f),
            ) {
                (Some(a), Some(b)) if b.median != 0.0 => format!("{:.2}", a.median / b.median),
                _ => "–".into(),
            }
        }));
        rows.push(row);
    }
    if rows.is_empty() {
        return false;
    }
    let mut header = vec![case_heading];
    header.extend(columns.iter().map(|(_, h)| *h));
    md.push_str("\n## Ratios utsuwa / QEMU (medians)\n\n");
    md.push_str(&report::table(&header, &rows));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct S {
        run: usize,
        error: Option<String>,
    }

    sample!(S);

    #[test]
    fn alternates_and_gives_up() {
        let vmms = [Vmm::Utsuwa("u".into()), Vmm::Qemu("q".into())];
        let mut order = Vec::new();
        let series = run(
            "test",
            5,
            &vmms,
            &[1u32, 2],
            |v, c, run| {
                order.push((v.name(), *c, run));
                S {
                    run,
                    error: (*c == 2 && v.name() == "qemu").then(|| "bad".into()),
                }
            },
            |_, _, _| String::new(),
        );
        assert_eq!(
            order[..4],
            [
                ("utsuwa", 1, 1),
                ("qemu", 1, 1),
                ("utsuwa", 2, 1),
                ("qemu", 2, 1)
            ]
        );
        assert_eq!(order[4..6], [("qemu", 1, 2), ("utsuwa", 1, 2)]);
        // QEMU's case 2 failed runs 1-3, so runs 4 and 5 are skipped.
        assert_eq!(
            order.iter().filter(|o| o.0 == "qemu" && o.1 == 2).count(),
            3
        );
        let q2 = &series[3];
        assert_eq!((q2.vmm, q2.case, q2.samples.len()), ("qemu", 2, 5));
        assert!(q2.samples[4]
            .error
            .as_deref()
            .unwrap()
            .starts_with("skipped"));
        assert_eq!(q2.samples[4].run, 5);
    }
}
