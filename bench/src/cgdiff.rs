//! VMM instructions per unit of work (an exit, a network frame) by
//! difference: the same boot under callgrind (`blk::callgrind::{wrap,
//! count}`) with a small and a large amount of that work; boot, set-up and
//! teardown are the same in both and cancel out, so
//! `(Ir(large) − Ir(small)) / (units(large) − units(small))` is what one
//! more unit costs the VMM in user space (all its threads; callgrind sees
//! neither the kernel nor the guest). Used by `exit`, `net` and `vsock`,
//! whose reports show its table (`section`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::boot::Vmm;
use crate::report::{self, Json};
use crate::stats::Summary;

/// How a callgrind part runs.
pub struct Setup {
    pub valgrind: PathBuf,
    /// Runs of each size.
    pub runs: usize,
    /// Time limit of one run.
    pub timeout: Duration,
    /// Where callgrind writes its files (each removed once read).
    pub dir: PathBuf,
}

/// One figure to measure: a VMM, a case, and the units of work of the
/// small and the large run.
#[derive(Debug, Clone)]
pub struct Item {
    pub vmm: &'static str,
    pub case: String,
    pub small: u64,
    pub large: u64,
}

impl Item {
    /// The item's VMM among `vmms`.
    pub fn vmm_in<'a>(&self, vmms: &'a [Vmm]) -> Result<&'a Vmm, String> {
        vmms.iter()
            .find(|v| v.name() == self.vmm)
            .ok_or_else(|| "no such VMM".into())
    }
}

/// Which of the two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    /// `small` or `large`, as this size says.
    pub fn pick<T>(self, small: T, large: T) -> T {
        match self {
            Size::Small => small,
            Size::Large => large,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// What one item measured: callgrind totals of every run of each size.
#[derive(Debug, Clone)]
pub struct Measured {
    pub item: Item,
    pub small: Vec<Result<u64, String>>,
    pub large: Vec<Result<u64, String>>,
}

fn ok(v: &[Result<u64, String>]) -> Vec<f64> {
    v.iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|&x| x as f64)
        .collect()
}

impl Measured {
    fn units(&self) -> f64 {
        self.item.large as f64 - self.item.small as f64
    }

    /// From the medians of each size.
    pub fn per_unit(&self) -> Option<f64> {
        let s = Summary::of(&ok(&self.small))?.median;
        let l = Summary::of(&ok(&self.large))?.median;
        Some((l - s) / self.units())
    }

    /// Of the runs paired by number (run i small with run i large): how
    /// much the figure moves from run to run.
    pub fn pairs(&self) -> Option<Summary> {
        let v: Vec<f64> = self
            .small
            .iter()
            .zip(&self.large)
            .filter_map(|(s, l)| {
                Some((*l.as_ref().ok()? as f64 - *s.as_ref().ok()? as f64) / self.units())
            })
            .collect();
        Summary::of(&v)
    }

    pub fn errors(&self) -> Vec<String> {
        self.small
            .iter()
            .chain(&self.large)
            .filter_map(|r| r.as_ref().err().cloned())
            .collect()
    }
}

/// Runs every item's two sizes `runs` times (small then large, items in
/// turn), `launch(item, size, run, file)` doing one run and returning the
/// callgrind total; `files` is where callgrind's output goes. An item
/// whose first run of either size fails is not run again.
pub fn run(
    tag: &str,
    runs: usize,
    items: &[Item],
    files: &std::path::Path,
    mut launch: impl FnMut(&Item, Size, usize, PathBuf) -> Result<u64, String>,
) -> Vec<Measured> {
    let mut out: Vec<Measured> = items
        .iter()
        .map(|i| Measured {
            item: i.clone(),
            small: vec![],
            large: vec![],
        })
        .collect();
    let began = Instant::now();
    for run in 1..=runs {
        for m in out.iter_mut() {
            if m.errors().len() >= 2 || (run > 1 && !m.errors().is_empty()) {
                continue;
            }
            for size in [Size::Small, Size::Large] {
                let units = match size {
                    Size::Small => m.item.small,
                    Size::Large => m.item.large,
                };
                let file = files.join(format!(
                    "callgrind.out.{tag}.{}.{}.{}.{run}",
                    m.item.vmm,
                    m.item.case.replace([' ', '/'], "_"),
                    size.name()
                ));
                let t = Instant::now();
                let r = launch(&m.item, size, run, file.clone());
                let _ = std::fs::remove_file(&file);
                eprintln!(
                    "[{tag}] callgrind {run}/{runs} {} {} ×{units}: {} ({:.1} s)",
                    m.item.vmm,
                    m.item.case,
                    match &r {
                        Ok(ir) => format!("{ir} instructions"),
                        Err(e) => format!("FAILED: {e}"),
                    },
                    t.elapsed().as_secs_f64()
                );
                match size {
                    Size::Small => m.small.push(r),
                    Size::Large => m.large.push(r),
                }
            }
        }
    }
    eprintln!(
        "[{tag}] callgrind runs done in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    out
}

/// The report's callgrind part: the table (`table`), any rows `more`
/// adds below it, every failed run, or why nothing was measured; returns
/// the JSON of it.
pub fn section(
    md: &mut String,
    measured: &Result<Vec<Measured>, String>,
    unit: &str,
    more: impl FnOnce(&[Measured]) -> String,
) -> Json {
    match measured {
        Ok(m) => {
            md.push_str(&table(m, unit));
            md.push_str(&more(m));
            for m in m {
                for e in m.errors() {
                    md.push_str(&format!("\n- {} {}: {e}", m.item.vmm, m.item.case));
                }
            }
            md.push('\n');
            json(m)
        }
        Err(e) => {
            md.push_str(&format!("Not measured: {e}\n"));
            Json::obj([("error", Json::str(e.clone()))])
        }
    }
}

/// Markdown rows: case, VMM, instructions per unit (median of medians'
/// difference; min–max over paired runs), runs ok.
pub fn table(measured: &[Measured], unit: &str) -> String {
    let rows: Vec<Vec<String>> = measured
        .iter()
        .map(|m| {
            let ok_runs = ok(&m.small).len().min(ok(&m.large).len());
            vec![
                m.item.case.clone(),
                m.item.vmm.to_string(),
                format!("{} / {}", m.item.small, m.item.large),
                m.per_unit().map_or("–".into(), |v| format!("{v:.0}")),
                m.pairs()
                    .map_or("–".into(), |s| format!("{:.0}–{:.0}", s.min, s.max)),
                format!("{ok_runs}/{}", m.small.len().max(m.large.len())),
            ]
        })
        .collect();
    report::table(
        &[
            "case",
            "VMM",
            &format!("{unit}s small / large"),
            &format!("instructions per {unit}"),
            "min–max (paired runs)",
            "runs ok",
        ],
        &rows,
    )
}

/// The JSON of every item.
pub fn json(measured: &[Measured]) -> Json {
    let runs = |v: &[Result<u64, String>]| {
        Json::Arr(
            v.iter()
                .map(|r| match r {
                    Ok(ir) => Json::Num(*ir as f64),
                    Err(e) => Json::obj([("error", Json::str(e.clone()))]),
                })
                .collect(),
        )
    };
    Json::Arr(
        measured
            .iter()
            .map(|m| {
                Json::obj([
                    ("vmm", Json::str(m.item.vmm)),
                    ("case", Json::str(m.item.case.clone())),
                    ("units_small", Json::Num(m.item.small as f64)),
                    ("units_large", Json::Num(m.item.large as f64)),
                    ("instructions_per_unit", Json::opt(m.per_unit())),
                    ("paired", Summary::json(m.pairs())),
                    ("ir_small", runs(&m.small)),
                    ("ir_large", runs(&m.large)),
                ])
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_per_unit() {
        let m = Measured {
            item: Item {
                vmm: "utsuwa",
                case: "pio".into(),
                small: 1000,
                large: 11000,
            },
            small: vec![Ok(5_000_000), Ok(5_010_000), Err("x".into())],
            large: vec![Ok(55_000_000), Ok(55_030_000), Ok(55_000_000)],
        };
        // Medians 5,005,000 and 55,000,000 over 10,000 units.
        assert_eq!(m.per_unit(), Some(4999.5));
        let p = m.pairs().unwrap();
        assert_eq!((p.n, p.min, p.max), (2, 5000.0, 5002.0));
        assert_eq!(m.errors(), vec!["x".to_string()]);
        let t = table(&[m], "exit");
        assert!(
            t.contains("| pio | utsuwa | 1000 / 11000 | 5000 | 5000–5002 | 2/3 |"),
            "{t}"
        );
    }
}
