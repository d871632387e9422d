//! PNG charts drawn with `plotters` (bitmap backend) from the JSON result
//! files in the output directory, whichever exist:
//! - `boot-startup.png` (boot.json): every run's marker and exit time per
//!   case and VMM, log scale, the median as a bar;
//! - `memory.png` (boot.json, api.json): VMM memory besides guest RAM;
//! - `blk-cpu.png` (blk.json): VMM CPU per request (user + system);
//! - `net-cpu.png` (net.json): VMM CPU per virtio-net frame;
//! - `density.png` (density.json): time until K guests all printed their
//!   marker, and PSS per VMM, against K.
//!
//! Text needs a TrueType font (DejaVu Sans, or `$UTSUWA_BENCH_FONT`); with
//! none the charts are drawn without text and summary.md carries the
//! legend.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

const UTSUWA: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const QEMU: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const W: u32 = 1000;
const H: u32 = 560;

fn color(vmm: &str) -> RGBColor {
    if vmm == "utsuwa" {
        UTSUWA
    } else {
        QEMU
    }
}

/// Registers a font once; false when none could be found.
fn have_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut paths: Vec<PathBuf> = std::env::var_os("UTSUWA_BENCH_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        paths.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            ]
            .map(PathBuf::from),
        );
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn median(v: &Value, key: &str) -> Option<f64> {
    num(&v[key]["median"])
}

/// Draws every chart whose data exists; returns the files written and,
/// for each chart that failed, why.
pub fn draw_all(dir: &Path) -> Vec<(String, Result<PathBuf, String>)> {
    let text = have_font();
    if !text {
        eprintln!("[charts] no TrueType font found: drawing without text");
    }
    let mut out = Vec::new();
    let boot = load(dir, "boot.json");
    let blk = load(dir, "blk.json");
    let api = load(dir, "api.json");
    let density = load(dir, "density.json");
    let net = load(dir, "net.json");
    if let Some(b) = &boot {
        let p = dir.join("boot-startup.png");
        out.push((
            "boot start-up".to_string(),
            boot_startup(&p, b, text).map(|_| p),
        ));
        let p = dir.join("memory.png");
        out.push((
            "memory".to_string(),
            memory(&p, b, api.as_ref(), text).map(|_| p),
        ));
    }
    if let Some(b) = &blk {
        let p = dir.join("blk-cpu.png");
        out.push((
            "blk CPU per request".to_string(),
            blk_cpu(&p, b, text).map(|_| p),
        ));
    }
    if let Some(n) = &net {
        let p = dir.join("net-cpu.png");
        out.push((
            "net CPU per frame".to_string(),
            net_cpu(&p, n, text).map(|_| p),
        ));
    }
    if let Some(d) = &density {
        let p = dir.join("density.png");
        out.push(("density".to_string(), density_chart(&p, d, text).map(|_| p)));
    }
    for (name, r) in &out {
        match r {
            Ok(p) => eprintln!("[charts] {name}: {}", p.display()),
            Err(e) => eprintln!("[charts] {name}: FAILED: {e}"),
        }
    }
    out
}

/// Two panels (marker, exit): each run as a dot, the median as a bar.
fn boot_startup(path: &Path, boot: &Value, text: bool) -> Result<(), String> {
    let results = boot["results"].as_array().ok_or("boot.json: no results")?;
    let cats: Vec<(String, String, Vec<f64>, Vec<f64>)> = results
        .iter()
        .map(|r| {
            let pick = |k: &str| -> Vec<f64> {
                r["samples"]
                    .as_array()
                    .map(|s| s.iter().filter_map(|x| num(&x[k])).collect())
                    .unwrap_or_default()
            };
            (
                format!(
                    "{} {}",
                    r["case"].as_str().unwrap_or("?"),
                    r["vmm"].as_str().unwrap_or("?")
                ),
                r["vmm"].as_str().unwrap_or("?").to_string(),
                pick("marker_ms"),
                pick("exit_ms"),
            )
        })
        .collect();
    let root = BitMapBackend::new(path, (W, H + 100)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    for (i, panel) in panels.iter().enumerate() {
        let values: Vec<&Vec<f64>> = cats
            .iter()
            .map(|c| if i == 0 { &c.2 } else { &c.3 })
            .collect();
        let hi = values
            .iter()
            .flat_map(|v| v.iter())
            .fold(1.0f64, |a, &b| a.max(b))
            * 1.5;
        let mut b = ChartBuilder::on(panel);
        b.margin(10).x_label_area_size(if text { 150 } else { 10 });
        b.y_label_area_size(if text { 50 } else { 10 });
        if text {
            b.caption(
                if i == 0 {
                    "spawn → guest marker (ms, log)"
                } else {
                    "spawn → VMM exit after power-off (ms, log)"
                },
                ("sans-serif", 18),
            );
        }
        let n = cats.len();
        let mut chart = b
            .build_cartesian_2d(0.0f64..n as f64, (1.0f64..hi).log_scale())
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(0);
        if text {
            mesh.y_label_formatter(&|y| format!("{y:.0}"));
        } else {
            mesh.y_labels(0);
        }
        mesh.draw().map_err(err)?;
        if text {
            for (c, cat) in cats.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(c as f64 + 0.5, 1.0));
                root.draw(&Text::new(
                    cat.0.clone(),
                    (px - 7, py + 6),
                    ("sans-serif", 13)
                        .into_font()
                        .transform(FontTransform::Rotate90),
                ))
                .map_err(err)?;
            }
        }
        for (c, (cat, v)) in cats.iter().zip(&values).enumerate() {
            let col = color(&cat.1);
            if let Some(s) = crate::stats::Summary::of(v) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(c as f64 + 0.1, 1.0), (c as f64 + 0.9, s.median)],
                        col.mix(0.25).filled(),
                    )))
                    .map_err(err)?;
            }
            // Dots spread across the category in run order.
            let k = v.len().max(1) as f64;
            chart
                .draw_series(v.iter().enumerate().map(|(j, &y)| {
                    let x = c as f64 + 0.2 + 0.6 * (j as f64 + 0.5) / k;
                    Circle::new((x, y), 3, col.filled())
                }))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Grouped bars: one group per label, one bar per series (None: no bar).
fn bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[(String, RGBColor, Vec<Option<f64>>)],
    text: bool,
) -> Result<(), String> {
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let hi = series
        .iter()
        .flat_map(|s| s.2.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b))
        * 1.15;
    let hi = if hi > 0.0 { hi } else { 1.0 };
    let mut b = ChartBuilder::on(&root);
    b.margin(15)
        .x_label_area_size(if text { 40 } else { 10 })
        .y_label_area_size(if text { 60 } else { 10 });
    if text {
        b.caption(title, ("sans-serif", 20));
    }
    let n = groups.len() as f64;
    let mut chart = b.build_cartesian_2d(0.0f64..n, 0.0f64..hi).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0);
    if !text {
        mesh.y_labels(0);
    }
    mesh.draw().map_err(err)?;
    if text {
        for (g, name) in groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px, py + 8),
                ("sans-serif", 13)
                    .into_text_style(&root)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
    }
    let width = 0.8 / series.len().max(1) as f64;
    for (si, (name, col, values)) in series.iter().enumerate() {
        let rects: Vec<_> = values
            .iter()
            .enumerate()
            .filter_map(|(g, v)| {
                let v = (*v)?;
                let x0 = g as f64 + 0.1 + si as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.95, v)],
                    col.filled(),
                ))
            })
            .collect();
        let labels: Vec<_> = values
            .iter()
            .enumerate()
            .filter_map(|(g, v)| {
                let v = (*v)?;
                let x0 = g as f64 + 0.1 + si as f64 * width;
                Some(Text::new(
                    format!("{v:.1}"),
                    (x0 + width * 0.47, v),
                    ("sans-serif", 12)
                        .into_text_style(&root)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                ))
            })
            .collect();
        let drawn = chart.draw_series(rects).map_err(err)?;
        if text {
            drawn
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], col.filled()));
            // Text::new takes its position as the label's top-left corner.
            chart.draw_series(labels).map_err(err)?;
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn memory(path: &Path, boot: &Value, api: Option<&Value>, text: bool) -> Result<(), String> {
    let results = boot["results"].as_array().ok_or("boot.json: no results")?;
    let mut groups: Vec<String> = Vec::new();
    for r in results {
        let c = r["case"].as_str().unwrap_or("?").to_string();
        if !groups.contains(&c) {
            groups.push(c);
        }
    }
    let vmms = ["utsuwa", "qemu"];
    let mut series: Vec<(String, RGBColor, Vec<Option<f64>>)> = vmms
        .iter()
        .map(|v| {
            let vals = groups
                .iter()
                .map(|g| {
                    results
                        .iter()
                        .find(|r| r["case"] == g.as_str() && r["vmm"] == *v)
                        .and_then(|r| median(r, "overhead_mib"))
                })
                .collect();
            (v.to_string(), color(v), vals)
        })
        .collect();
    if let Some(a) = api {
        groups.push("api idle (RSS)".into());
        series[0].2.push(median(&a["results"], "idle_rss_mib"));
        series[1].2.push(None);
        groups.push("api, guest halted".into());
        series[0]
            .2
            .push(median(&a["results"], "running_overhead_mib"));
        series[1].2.push(None);
    }
    bars(
        path,
        "VMM memory besides guest RAM, MiB (median)",
        &groups,
        &series,
        text,
    )
}

fn blk_cpu(path: &Path, blk: &Value, text: bool) -> Result<(), String> {
    let results = blk["results"].as_array().ok_or("blk.json: no results")?;
    let mut groups: Vec<String> = Vec::new();
    for r in results {
        let g = format!(
            "{} {}",
            r["cache"].as_str().unwrap_or("?"),
            r["irq"].as_str().unwrap_or("?")
        );
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let series = ["utsuwa", "qemu"]
        .iter()
        .map(|v| {
            let vals = groups
                .iter()
                .map(|g| {
                    results
                        .iter()
                        .find(|r| {
                            format!(
                                "{} {}",
                                r["cache"].as_str().unwrap_or("?"),
                                r["irq"].as_str().unwrap_or("?")
                            ) == *g
                                && r["vmm"] == *v
                        })
                        .and_then(|r| {
                            let c = &r["cpu_per_request_us"];
                            Some(num(&c["user"])? + num(&c["system"])?)
                        })
                })
                .collect();
            (v.to_string(), color(v), vals)
        })
        .collect::<Vec<_>>();
    bars(
        path,
        "blk: VMM CPU per request, µs (user + system, guest time excluded)",
        &groups,
        &series,
        text,
    )
}

fn net_cpu(path: &Path, net: &Value, text: bool) -> Result<(), String> {
    let results = net["results"].as_array().ok_or("net.json: no results")?;
    let key = |r: &Value| {
        format!(
            "{} B {}",
            r["frame"].as_u64().unwrap_or(0),
            r["irq"].as_str().unwrap_or("?")
        )
    };
    let mut groups: Vec<String> = Vec::new();
    for r in results {
        if !groups.contains(&key(r)) {
            groups.push(key(r));
        }
    }
    let series = ["utsuwa", "qemu"]
        .iter()
        .map(|v| {
            let vals = groups
                .iter()
                .map(|g| {
                    results
                        .iter()
                        .find(|r| key(r) == *g && r["vmm"] == *v)
                        .and_then(|r| median(r, "vmm_us_per_frame"))
                })
                .collect();
            (v.to_string(), color(v), vals)
        })
        .collect::<Vec<_>>();
    bars(
        path,
        "net: VMM CPU per frame, µs (user + system, guest time excluded)",
        &groups,
        &series,
        text,
    )
}

fn density_chart(path: &Path, d: &Value, text: bool) -> Result<(), String> {
    let results = d["results"].as_array().ok_or("density.json: no results")?;
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    let metrics = [
        (
            "all_markers_ms",
            "K guests at once: spawn → last marker (ms)",
        ),
        ("per_vmm_pss_mib", "PSS per VMM incl. guest pages (MiB)"),
    ];
    for (panel, (key, title)) in panels.iter().zip(metrics) {
        let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for vmm in ["utsuwa", "qemu"] {
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r["vmm"] == vmm)
                .filter_map(|r| Some((num(&r["k"])?, median(r, key)?)))
                .collect();
            if !pts.is_empty() {
                lines.push((vmm.to_string(), pts));
            }
        }
        let hi = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            * 1.15;
        let hi = if hi > 0.0 { hi } else { 1.0 };
        let mut b = ChartBuilder::on(panel);
        b.margin(15)
            .x_label_area_size(if text { 35 } else { 10 })
            .y_label_area_size(if text { 55 } else { 10 });
        if text {
            b.caption(title, ("sans-serif", 17));
        }
        let mut chart = b
            .build_cartesian_2d(0.0f64..52.0, 0.0f64..hi)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("K (guests)");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        for (vmm, pts) in &lines {
            let col = color(vmm);
            let s = chart
                .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
                .map_err(err)?;
            if text {
                s.label(vmm.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], col.stroke_width(2))
                });
            }
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))
                .map_err(err)?;
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
