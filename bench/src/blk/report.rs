//! The `blk` benchmark's report: throughput per case and VMM (median,
//! min, max), utsuwa/QEMU ratios, the VMMs' CPU time per request (in
//! total and per thread), callgrind's instructions per request and the
//! functions they go to, every failed run, the method and the
//! environment, as Markdown and as JSON.

use std::fmt::Write as _;

use super::callgrind::{self, What};
use super::cpu::{self, Split, ThreadUse};
use super::{requests, Case, Sample, Series, BENCH_MIB, IMAGE_MIB, IOS, MODES, QD, REQ_KIB};
use crate::alternate::GIVE_UP_AFTER;
use crate::boot::MEM_MIB;
use crate::report::{self, table, Json};
use crate::stats::{cell, ratio, Summary};

/// What the report says about where and how it ran.
pub struct Context {
    pub date: String,
    pub runs: usize,
    pub timeout_s: u64,
    pub environment: Vec<(String, String)>,
    pub notes: Vec<String>,
    /// Where the image was, and its file system.
    pub image: String,
    /// Callgrind's results, or why there are none.
    pub callgrind: Result<callgrind::Outcome, String>,
    pub callgrind_runs: usize,
}

/// Summaries of one series.
struct Digest {
    read: Option<Summary>,
    write: Option<Summary>,
    iops: Option<Summary>,
    flush_ms: Option<Summary>,
    failed: usize,
    ok: usize,
    /// Pooled over the successful runs: CPU per request, µs.
    per_req: Split,
    /// The VMM's (user + system) µs per request of each run.
    per_req_runs: Option<Summary>,
    /// Per thread role, pooled, µs per request.
    roles: Vec<(String, Split)>,
    guest_ms: Option<Summary>,
    between_ms: Option<Summary>,
    /// Host block device, per run: reads, reads merged, MiB read,
    /// writes, writes merged, MiB written.
    disk: [Option<Summary>; 6],
}

fn uses(s: &Sample) -> Vec<ThreadUse> {
    cpu::usage(&s.cpu_start, &s.cpu_end)
}

fn per_request(total: Split, runs: usize) -> Split {
    let n = (requests(BENCH_MIB, IOS) * runs.max(1) as u64) as f64;
    Split {
        user_ms: total.user_ms * 1000.0 / n,
        sys_ms: total.sys_ms * 1000.0 / n,
        guest_ms: total.guest_ms * 1000.0 / n,
    }
}

fn digest(s: &Series) -> Digest {
    let ok: Vec<&Sample> = s
        .samples
        .iter()
        .filter(|x| x.error.is_none() && x.bench.is_some())
        .collect();
    let pick = |f: fn(&super::Bench) -> f64| {
        Summary::of(
            &ok.iter()
                .filter_map(|x| x.bench.as_ref().map(f))
                .collect::<Vec<_>>(),
        )
    };
    let mut pooled = Split::default();
    let mut all: Vec<ThreadUse> = Vec::new();
    let mut per_run = Vec::new();
    let mut guest = Vec::new();
    for x in &ok {
        let u = uses(x);
        let t = cpu::totals(&u);
        pooled.user_ms += t.user_ms;
        pooled.sys_ms += t.sys_ms;
        pooled.guest_ms += t.guest_ms;
        per_run.push(per_request(t, 1).vmm_ms());
        guest.push(t.guest_ms);
        all.extend(u);
    }
    let roles = cpu::by_role(&all)
        .into_iter()
        .map(|(r, t)| (r, per_request(t, ok.len())))
        .collect();
    let io: Vec<super::DiskIo> = ok.iter().filter_map(|x| x.disk_io).collect();
    let io_pick = |f: fn(&super::DiskIo) -> Option<f64>| {
        Summary::of(&io.iter().filter_map(f).collect::<Vec<_>>())
    };
    fn mib(sectors: u64) -> Option<f64> {
        Some(sectors as f64 / 2048.0)
    }
    let disk = [
        io_pick(|d| Some(d.reads as f64)),
        io_pick(|d| Some(d.reads_merged as f64)),
        io_pick(|d| mib(d.read_sectors)),
        io_pick(|d| Some(d.writes as f64)),
        io_pick(|d| Some(d.writes_merged as f64)),
        io_pick(|d| mib(d.write_sectors)),
    ];
    Digest {
        disk,
        read: pick(|b| b.seq_read_mbps),
        write: pick(|b| b.seq_write_mbps),
        iops: pick(|b| b.randread_iops),
        flush_ms: pick(|b| b.flush_us / 1000.0),
        failed: s.samples.len() - ok.len(),
        ok: ok.len(),
        per_req: per_request(pooled, ok.len()),
        per_req_runs: Summary::of(&per_run),
        roles,
        guest_ms: Summary::of(&guest),
        between_ms: Summary::of(&ok.iter().map(|x| x.between_ms).collect::<Vec<_>>()),
    }
}

fn f0(v: Option<f64>) -> String {
    cell(v, 0)
}

fn f2(v: Option<f64>) -> String {
    cell(v, 2)
}

fn cells(s: Option<Summary>) -> [String; 3] {
    [
        f0(s.map(|s| s.median)),
        f0(s.map(|s| s.min)),
        f0(s.map(|s| s.max)),
    ]
}

fn med(s: Option<Summary>) -> Option<f64> {
    s.map(|s| s.median)
}

fn case_cells(c: &Case) -> [String; 2] {
    [c.cache.name().to_string(), c.irq.to_string()]
}

/// Thousands separated by commas.
fn commas(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The report as (Markdown, JSON).
pub fn render(ctx: &Context, series: &[Series]) -> (String, Json) {
    let digests: Vec<Digest> = series.iter().map(digest).collect();
    let reqs = requests(BENCH_MIB, IOS);
    let seq = BENCH_MIB * 1024 / REQ_KIB;
    let mut md = String::new();
    let _ = writeln!(md, "# Block I/O benchmark: utsuwa vs QEMU microvm\n");
    let _ = writeln!(
        md,
        "{}: {} runs per case and VMM (VMMs alternating, the first one swapped every run); \
         guest `probe` (`blk` check, `bench` operation), 1 vCPU, {MEM_MIB} MiB; one virtio-blk disk on a \
         {IMAGE_MIB} MiB raw image ({}); {BENCH_MIB} MiB sequential write then read in {REQ_KIB} KiB requests, \
         then {IOS} random 4 KiB reads, {QD} in flight; {} s limit per run.\n",
        ctx.date, ctx.runs, ctx.image, ctx.timeout_s
    );
    for note in &ctx.notes {
        let _ = writeln!(md, "**Note:** {note}\n");
    }

    md.push_str("## Guest-visible throughput (median, min, max over the runs)\n\n");
    md.push_str("MB/s = 10^6 bytes/s, timed by the guest with its TSC; *flush*: the FLUSH after the write (the host's `fdatasync`), timed apart.\n\n");
    let rows: Vec<Vec<String>> = series
        .iter()
        .zip(&digests)
        .map(|(s, d)| {
            let mut row = case_cells(&s.case).to_vec();
            row.push(s.vmm.to_string());
            row.extend(cells(d.read));
            row.extend(cells(d.write));
            row.extend(cells(d.iops));
            row.push(f0(med(d.flush_ms)));
            row.push(format!("{}/{}", d.failed, s.samples.len()));
            row
        })
        .collect();
    md.push_str(&table(
        &[
            "cache",
            "irq",
            "VMM",
            "seq read MB/s",
            "min",
            "max",
            "seq write MB/s",
            "min",
            "max",
            "4K randread IOPS",
            "min",
            "max",
            "flush ms",
            "failed",
        ],
        &rows,
    ));

    let mut ratios_json = Vec::new();
    if series.iter().any(|s| s.vmm == "qemu") {
        md.push_str("\n## utsuwa / QEMU (ratio of medians)\n\n");
        md.push_str("Throughput: above 1 means utsuwa is faster. CPU per request (user + system, pooled): below 1 means utsuwa is cheaper.\n\n");
        let mut rows = Vec::new();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for s in series {
            let key = (s.case.cache.name(), s.case.irq);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let get = |vmm: &str| {
                series
                    .iter()
                    .zip(&digests)
                    .find(|(x, _)| (x.case.cache.name(), x.case.irq) == key && x.vmm == vmm)
                    .map(|(_, d)| d)
            };
            let (Some(u), Some(q)) = (get("utsuwa"), get("qemu")) else {
                continue;
            };
            let cpu = |d: &Digest| (d.ok > 0).then(|| d.per_req.vmm_ms());
            let r = [
                ratio(med(u.read), med(q.read)),
                ratio(med(u.write), med(q.write)),
                ratio(med(u.iops), med(q.iops)),
                ratio(cpu(u), cpu(q)),
            ];
            let mut row = case_cells(&s.case).to_vec();
            row.extend(r.iter().map(|v| f2(*v)));
            rows.push(row);
            ratios_json.push(Json::obj([
                ("cache", Json::str(key.0)),
                ("irq", Json::str(key.1)),
                ("seq_read", Json::opt(r[0])),
                ("seq_write", Json::opt(r[1])),
                ("randread_iops", Json::opt(r[2])),
                ("vmm_cpu_per_request", Json::opt(r[3])),
            ]));
        }
        md.push_str(&table(
            &[
                "cache",
                "irq",
                "seq read",
                "seq write",
                "4K randread IOPS",
                "VMM CPU per request",
            ],
            &rows,
        ));
    }

    let _ = writeln!(
        md,
        "\n## VMM CPU time per request (µs, the `bench` phase, pooled over the runs)\n\n\
         requests per run = 2 × {BENCH_MIB} MiB × 1024 / {REQ_KIB} KiB (sequential write and read) \
         + 1 (FLUSH) + {IOS} (random reads) = 2 × {seq} + 1 + {IOS} = **{reqs}**. \
         CPU time of every thread of the VMM process from the guest's `PROBE-CHECK blk pass` (disk ready) to its \
         `PROBE blk-bench` line, summed over threads and runs, divided by {reqs} × runs. *user*/*system*: \
         the VMM's own time (kernel work on its behalf included: syscalls, io_uring, KVM exits); *guest*: the vCPU \
         running the guest (which busy-waits in both modes), not a VMM cost, shown for scale. *per run*: min–max of \
         the runs' user + system.\n"
    );
    let rows: Vec<Vec<String>> = series
        .iter()
        .zip(&digests)
        .map(|(s, d)| {
            let mut row = case_cells(&s.case).to_vec();
            row.push(s.vmm.to_string());
            if d.ok == 0 {
                row.extend(["–"; 7].map(String::from));
                return row;
            }
            let p = d.per_req;
            row.push(format!("{:.2}", p.user_ms));
            row.push(format!("{:.2}", p.sys_ms));
            row.push(format!("**{:.2}**", p.vmm_ms()));
            row.push(
                d.per_req_runs
                    .map_or("–".into(), |r| format!("{:.2}–{:.2}", r.min, r.max)),
            );
            row.push(format!("{:.2}", p.guest_ms));
            row.push(f0(med(d.guest_ms)));
            row.push(f0(med(d.between_ms)));
            row
        })
        .collect();
    md.push_str(&table(
        &[
            "cache",
            "irq",
            "VMM",
            "user",
            "system",
            "user + system",
            "per run",
            "guest",
            "guest ms/run",
            "bench ms/run",
        ],
        &rows,
    ));

    md.push_str("\n### Per thread (µs per request, pooled; threads grouped by name, `-NUMBER` suffixes dropped)\n\n");
    let mut rows = Vec::new();
    for (s, d) in series.iter().zip(&digests) {
        // Threads that used nothing worth a row (< 0.005 µs per request).
        let idle = |p: &Split| p.user_ms + p.sys_ms + p.guest_ms < 0.005;
        for (role, p) in d.roles.iter().filter(|(_, p)| !idle(p)) {
            let mut row = case_cells(&s.case).to_vec();
            row.push(s.vmm.to_string());
            row.push(format!("`{role}`"));
            row.push(format!("{:.2}", p.user_ms));
            row.push(format!("{:.2}", p.sys_ms));
            row.push(format!("{:.2}", p.guest_ms));
            rows.push(row);
        }
    }
    md.push_str(&table(
        &["cache", "irq", "VMM", "thread", "user", "system", "guest"],
        &rows,
    ));

    if digests.iter().any(|d| d.disk[0].is_some()) {
        md.push_str(&format!(
            "\n## Host block device during the `bench` phase (median per run)\n\n\
             I/Os the host's disk under the image completed between the two CPU readings \
             (`/sys/dev/block/MAJ:MIN/stat`; anything else on that disk counts too), *merged*: requests the \
             host block layer merged into others before issuing them (submitted = completed + merged). With \
             cache=none every guest request reaches it ({BENCH_MIB} MiB written; {BENCH_MIB} MiB plus {IOS} × 4 KiB \
             read); with writeback only the FLUSH's write-back does.\n\n"
        ));
        let rows: Vec<Vec<String>> = series
            .iter()
            .zip(&digests)
            .map(|(s, d)| {
                let mut row = case_cells(&s.case).to_vec();
                row.push(s.vmm.to_string());
                row.extend(d.disk.iter().map(|x| f0(med(*x))));
                row
            })
            .collect();
        md.push_str(&table(
            &[
                "cache",
                "irq",
                "VMM",
                "reads",
                "merged",
                "MiB read",
                "writes",
                "merged",
                "MiB written",
            ],
            &rows,
        ));
    }

    let cg_json = callgrind_section(ctx, &mut md);

    let failures = failures(series);
    if !failures.is_empty() {
        md.push_str("\n## Failed runs\n\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }

    let _ = write!(md, "\n## Method\n\n{}", method(ctx));
    md.push_str(&report::environment(&ctx.environment));

    let json = json(ctx, series, &digests, ratios_json, cg_json);
    (md, json)
}

/// The callgrind tables; returns their JSON.
fn callgrind_section(ctx: &Context, md: &mut String) -> Json {
    let creq = callgrind::bench_requests();
    let _ = writeln!(
        md,
        "\n## VMM instructions per request (callgrind, user space only)\n\n\
         A smaller `bench` ({} MiB, {} random reads: 2 × {} + 1 + {} = **{creq}** requests), cache=writeback, \
         under `valgrind --tool=callgrind --collect-atstart=yes`, and two baselines with the same disk: `boot` \
         (`probe.checks=none`) and `blk-init` (`probe.checks=blk probe.blk_ops=none`: the disk found and \
         initialised, no I/O). Every run powers off; the figure is `totals:` of callgrind's file (median of {} \
         runs). Instructions per request = (bench − baseline) / {creq}.\n",
        callgrind::MIB,
        callgrind::IOS,
        callgrind::MIB * 1024 / REQ_KIB,
        callgrind::IOS,
        ctx.callgrind_runs
    );
    let out = match &ctx.callgrind {
        Err(why) => {
            let _ = writeln!(md, "Not measured: {why}");
            return Json::obj([("skipped", Json::str(why.as_str()))]);
        }
        Ok(o) => o,
    };
    for n in &out.notes {
        let _ = writeln!(md, "**Note:** {n}\n");
    }
    let medians = |vmm: &str, what: What, irq: Option<&str>| {
        let v: Vec<f64> = out
            .runs
            .iter()
            .filter(|r| r.vmm == vmm && r.what == what && (what == What::Boot || r.irq == irq))
            .filter_map(|r| r.ir.as_ref().ok().map(|&x| x as f64))
            .collect();
        Summary::of(&v)
    };
    let mut vmms: Vec<&str> = Vec::new();
    for r in &out.runs {
        if !vmms.contains(&r.vmm) {
            vmms.push(r.vmm);
        }
    }
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    // (vmm, irq, per request minus boot)
    let mut per_boot: Vec<(&str, &str, Option<f64>)> = Vec::new();
    for vmm in &vmms {
        for irq in MODES {
            let boot = medians(vmm, What::Boot, None);
            let init = medians(vmm, What::Init, Some(irq));
            let bench = medians(vmm, What::Bench, Some(irq));
            let per = |base: Option<Summary>| match (bench, base) {
                (Some(b), Some(a)) => Some((b.median - a.median) / creq as f64),
                _ => None,
            };
            let (vs_boot, vs_init) = (per(boot), per(init));
            per_boot.push((vmm, irq, vs_boot));
            let spread = bench.map_or("–".into(), |b| {
                format!("{}–{}", commas(b.min), commas(b.max))
            });
            rows.push(vec![
                vmm.to_string(),
                irq.to_string(),
                med(boot).map_or("–".into(), commas),
                med(init).map_or("–".into(), commas),
                med(bench).map_or("–".into(), commas),
                spread,
                vs_boot.map_or("–".into(), |v| format!("**{}**", commas(v))),
                vs_init.map_or("–".into(), commas),
            ]);
            summary.push(Json::obj([
                ("vmm", Json::str(*vmm)),
                ("irq", Json::str(irq)),
                ("boot_ir", Summary::json(boot)),
                ("blk_init_ir", Summary::json(init)),
                ("bench_ir", Summary::json(bench)),
                ("ir_per_request_minus_boot", Json::opt(vs_boot)),
                ("ir_per_request_minus_blk_init", Json::opt(vs_init)),
            ]));
        }
    }
    md.push_str(&table(
        &[
            "VMM",
            "irq",
            "boot",
            "blk-init",
            "bench",
            "bench min–max",
            "per request (− boot)",
            "per request (− blk-init)",
        ],
        &rows,
    ));
    let get = |vmm: &str, irq: &str| {
        per_boot
            .iter()
            .find(|(v, i, _)| *v == vmm && *i == irq)
            .and_then(|(_, _, x)| *x)
    };
    if vmms.contains(&"qemu") {
        let r: Vec<String> = MODES
            .iter()
            .map(|irq| format!("{irq} {}", f2(ratio(get("utsuwa", irq), get("qemu", irq)))))
            .collect();
        let _ = writeln!(
            md,
            "\nutsuwa / QEMU, instructions per request (− boot): {}.",
            r.join(", ")
        );
    }
    for t in &out.top {
        let _ = writeln!(
            md,
            "\n### Where {}'s instructions go (irq={}): top 10 functions by self cost, `bench` minus `blk-init`\n\n\
             {} instructions more in all ({:.0} per request).\n",
            t.vmm,
            t.irq,
            commas(t.delta_total),
            t.delta_total / creq as f64
        );
        let rows: Vec<Vec<String>> = t
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| {
                vec![
                    (i + 1).to_string(),
                    format!("`{}`", f.function),
                    f.object.clone(),
                    format!("{:.0}", f.per_request),
                    format!("{:.1}%", f.share * 100.0),
                ]
            })
            .collect();
        md.push_str(&table(
            &["#", "function", "object", "instructions / request", "share"],
            &rows,
        ));
    }
    let runs = out.runs.iter().map(|r| {
        Json::obj([
            ("vmm", Json::str(r.vmm)),
            ("what", Json::str(r.what.name())),
            ("irq", Json::opt_str(r.irq)),
            ("run", Json::Num(r.run as f64)),
            (
                "instructions",
                r.ir.as_ref().map_or(Json::Null, |&v| Json::Num(v as f64)),
            ),
            (
                "error",
                Json::opt_str(r.ir.as_ref().err().map(String::as_str)),
            ),
            ("seconds", Json::Num(r.secs)),
        ])
    });
    let top = out.top.iter().map(|t| {
        Json::obj([
            ("vmm", Json::str(t.vmm)),
            ("irq", Json::str(t.irq)),
            ("delta_total", Json::Num(t.delta_total)),
            (
                "functions",
                Json::Arr(
                    t.functions
                        .iter()
                        .map(|f| {
                            Json::obj([
                                ("function", Json::str(f.function.as_str())),
                                ("object", Json::str(f.object.as_str())),
                                ("delta", Json::Num(f.delta)),
                                ("per_request", Json::Num(f.per_request)),
                                ("share", Json::Num(f.share)),
                            ])
                        })
                        .collect(),
                ),
            ),
        ])
    });
    Json::obj([
        ("mib", Json::Num(callgrind::MIB as f64)),
        ("ios", Json::Num(callgrind::IOS as f64)),
        ("requests", Json::Num(creq as f64)),
        ("runs_each", Json::Num(ctx.callgrind_runs as f64)),
        (
            "notes",
            Json::Arr(out.notes.iter().map(|n| Json::str(n.as_str())).collect()),
        ),
        ("summary", Json::Arr(summary)),
        ("runs", Json::Arr(runs.collect())),
        ("top_functions", Json::Arr(top.collect())),
    ])
}

/// Every failed run, consecutive runs with the same error on one line.
fn failures(series: &[Series]) -> Vec<String> {
    let mut out = Vec::new();
    for s in series {
        let mut runs: Vec<(usize, usize, &str)> = Vec::new();
        for x in &s.samples {
            let Some(e) = x.error.as_deref() else {
                continue;
            };
            match runs.last_mut() {
                Some((_, last, err)) if *err == e && *last + 1 == x.run => *last = x.run,
                _ => runs.push((x.run, x.run, e)),
            }
        }
        for (first, last, e) in runs {
            let which = if first == last {
                format!("run {first}")
            } else {
                format!("runs {first}–{last}")
            };
            out.push(format!(
                "{which} {} cache={} irq={}: {e}",
                s.vmm,
                s.case.cache.name(),
                s.case.irq
            ));
        }
    }
    out
}

fn method(ctx: &Context) -> String {
    let plan = super::bench_plan(BENCH_MIB, IOS, "MODE", "halt");
    format!(
        "- Image: {IMAGE_MIB} MiB raw file written by the harness with the probe's data pattern (seed 1, every block \
         allocated, nothing sparse), fsynced, then read once. Both VMMs get the same file; the guest's `bench` \
         writes the whole disk and then reads it, so every read hits data the run itself just wrote.\n\
         - Page cache, set before every run: *writeback* (utsuwa's default `--disk path=IMG`; QEMU \
         `cache=writeback`) goes through the host page cache, and every run starts with the whole image in it, clean \
         (the harness reads the file through just before the VMM starts): warm for both VMMs, and each run's reads \
         follow its own write of the same blocks anyway. The write lands in the page cache (dirty); the FLUSH after \
         it is the host's `fdatasync`, timed apart (*flush* column). *none* (utsuwa `--disk path=IMG,cache=none`; \
         QEMU `cache=none`) opens the image with O_DIRECT: every request goes to the host's disk ({}); before each \
         such run the harness drops the file's cached pages (`fdatasync`, `posix_fadvise(DONTNEED)`), so that no \
         run pays for invalidating pages a writeback run left.\n\
         - Order: for each run, every case (cache × irq) in turn, and within a case both VMMs one after the other, \
         the first one swapped every run, so neither always follows the other's writes and flushes.\n\
         - Guest plan: `{plan}` with MODE `msix` (completions by MSI-X interrupt) or `poll` (used ring polled, \
         interrupts off). The guest prints MB/s and IOPS (TSC-timed). The run is killed once the verdict is out; \
         a run without `PROBE-CHECK blk-bench pass` within the limit is failed; after {GIVE_UP_AFTER} failures in a \
         row a case is not run again for that VMM.\n\
         - CPU: at the guest's `PROBE-CHECK blk pass` (disk ready, `bench` about to start) and at its \
         `PROBE blk-bench` line, the harness reads `/proc/PID/task/*/stat` (utime, stime, guest_time) and \
         `schedstat` (exact runtime) of every thread. Per thread: guest = Δguest_time, and the rest of Δruntime split \
         between user and system in the ratio (Δutime − Δguest_time) : Δstime (utime includes guest time). The split \
         comes from timer ticks, so it is approximate (a few ms per thread and run); the runtime is exact. A thread \
         that starts in between counts from zero; one that exits in between would be missed (the JSON has the \
         process's own `/proc/PID/stat` at the end for comparison).\n\
         - QEMU: `-M microvm,pcie=on,acpi=on,rtc=on -enable-kvm -cpu host,-arch-capabilities -m {MEM_MIB}M -smp 1 \
         -nodefaults -no-user-config -nographic -serial stdio -kernel probe -append PLAN -drive \
         file=IMG,if=none,id=d0,format=raw,cache=writeback|none -device virtio-blk-pci,drive=d0,disable-legacy=on` \
         (the probe assigns the BAR, which microvm leaves at 0); utsuwa: `run --kernel probe --cpus 1 --memory \
         {MEM_MIB}M --cmdline PLAN --disk path=IMG[,cache=none]`. Both offer one queue here.\n\
         - Callgrind: see its section. It serialises the VMM's threads and slows them down (≈50×), so requests \
         batch differently than in the timed runs; the guest still runs at full speed under KVM.\n",
        ctx.image
    )
}

fn split_json(s: &Split) -> Json {
    Json::obj([
        ("user", Json::Num(s.user_ms)),
        ("system", Json::Num(s.sys_ms)),
        ("guest", Json::Num(s.guest_ms)),
    ])
}

fn json(
    ctx: &Context,
    series: &[Series],
    digests: &[Digest],
    ratios: Vec<Json>,
    callgrind: Json,
) -> Json {
    let results: Vec<Json> = series
        .iter()
        .zip(digests)
        .map(|(s, d)| {
            let samples = s.samples.iter().map(|x| {
                let threads = uses(x).into_iter().map(|t| {
                    let name = x
                        .cpu_end
                        .iter()
                        .find(|e| e.tid == t.tid)
                        .map_or("", |e| e.name.as_str());
                    Json::obj([
                        ("tid", Json::Num(f64::from(t.tid))),
                        ("name", Json::str(name)),
                        ("new", Json::Bool(t.new)),
                        ("ms", split_json(&t.split)),
                    ])
                });
                let b = x.bench.as_ref();
                Json::obj([
                    ("run", Json::Num(x.run as f64)),
                    ("seq_read_mbps", Json::opt(b.map(|b| b.seq_read_mbps))),
                    ("seq_write_mbps", Json::opt(b.map(|b| b.seq_write_mbps))),
                    ("randread_iops", Json::opt(b.map(|b| b.randread_iops))),
                    ("seq_read_us", Json::opt(b.map(|b| b.seq_read_us))),
                    ("seq_write_us", Json::opt(b.map(|b| b.seq_write_us))),
                    ("flush_us", Json::opt(b.map(|b| b.flush_us))),
                    ("randread_us", Json::opt(b.map(|b| b.randread_us))),
                    ("irqs", Json::opt(b.map(|b| b.irqs))),
                    ("queues", Json::opt(b.map(|b| b.queues))),
                    ("tsc_khz", Json::opt(x.tsc_khz)),
                    (
                        "host_disk_io",
                        x.disk_io.map_or(Json::Null, |d| {
                            Json::obj([
                                ("reads", Json::Num(d.reads as f64)),
                                ("reads_merged", Json::Num(d.reads_merged as f64)),
                                ("read_sectors", Json::Num(d.read_sectors as f64)),
                                ("writes", Json::Num(d.writes as f64)),
                                ("writes_merged", Json::Num(d.writes_merged as f64)),
                                ("write_sectors", Json::Num(d.write_sectors as f64)),
                            ])
                        }),
                    ),
                    ("bench_line", Json::opt_str(b.map(|b| b.line.as_str()))),
                    ("cpu_interval_ms", Json::Num(x.between_ms)),
                    ("cpu_ms", split_json(&cpu::totals(&uses(x)))),
                    ("threads", Json::Arr(threads.collect())),
                    (
                        "exited_threads",
                        Json::Num(cpu::exited(&x.cpu_start, &x.cpu_end) as f64),
                    ),
                    (
                        "process_end_ticks",
                        x.process_end.map_or(Json::Null, |(u, s, g)| {
                            Json::obj([
                                ("utime", Json::Num(u as f64)),
                                ("stime", Json::Num(s as f64)),
                                ("guest_time", Json::Num(g as f64)),
                            ])
                        }),
                    ),
                    ("error", Json::opt_str(x.error.as_deref())),
                ])
            });
            let roles = d.roles.iter().map(|(r, p)| {
                Json::obj([("thread", Json::str(r.as_str())), ("us", split_json(p))])
            });
            Json::obj([
                ("cache", Json::str(s.case.cache.name())),
                ("irq", Json::str(s.case.irq)),
                ("vmm", Json::str(s.vmm)),
                ("seq_read_mbps", Summary::json(d.read)),
                ("seq_write_mbps", Summary::json(d.write)),
                ("randread_iops", Summary::json(d.iops)),
                ("flush_ms", Summary::json(d.flush_ms)),
                ("failed", Json::Num(d.failed as f64)),
                (
                    "cpu_per_request_us",
                    if d.ok > 0 {
                        split_json(&d.per_req)
                    } else {
                        Json::Null
                    },
                ),
                ("vmm_cpu_per_request_us_runs", Summary::json(d.per_req_runs)),
                ("cpu_per_request_us_by_thread", Json::Arr(roles.collect())),
                ("samples", Json::Arr(samples.collect())),
            ])
        })
        .collect();
    Json::obj([
        ("benchmark", Json::str("blk")),
        ("date", Json::str(ctx.date.as_str())),
        (
            "settings",
            Json::obj([
                ("runs", Json::Num(ctx.runs as f64)),
                ("timeout_s", Json::Num(ctx.timeout_s as f64)),
                ("memory_mib", Json::Num(MEM_MIB as f64)),
                ("image_mib", Json::Num(IMAGE_MIB as f64)),
                ("image", Json::str(ctx.image.as_str())),
                ("bench_mib", Json::Num(BENCH_MIB as f64)),
                ("req_kib", Json::Num(REQ_KIB as f64)),
                ("qd", Json::Num(QD as f64)),
                ("random_ios", Json::Num(IOS as f64)),
                (
                    "requests_per_run",
                    Json::Num(requests(BENCH_MIB, IOS) as f64),
                ),
                (
                    "requests_formula",
                    Json::str("2 * bench_mib * 1024 / req_kib + 1 + random_ios"),
                ),
                (
                    "plan",
                    Json::str(super::bench_plan(BENCH_MIB, IOS, "MODE", "halt")),
                ),
                ("qemu", Json::Bool(series.iter().any(|s| s.vmm == "qemu"))),
            ]),
        ),
        ("environment", report::environment_json(&ctx.environment)),
        ("notes", report::strings_json(&ctx.notes)),
        ("results", Json::Arr(results)),
        ("ratios_utsuwa_over_qemu", Json::Arr(ratios)),
        ("callgrind", callgrind),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_callgrind_row_per_vmm_and_mode() {
        let mut runs = Vec::new();
        for run in 1..=2 {
            for vmm in ["utsuwa", "qemu"] {
                for (what, irq) in [
                    (What::Boot, None),
                    (What::Init, Some("msix")),
                    (What::Bench, Some("msix")),
                ] {
                    runs.push(callgrind::Run {
                        vmm,
                        what,
                        irq,
                        run,
                        ir: Ok(match what {
                            What::Boot => 1000,
                            What::Init => 2000,
                            What::Bench => 1000 + 2513 * 10,
                        }),
                        secs: 0.0,
                        file: "x".into(),
                    });
                }
            }
        }
        let ctx = Context {
            date: "d".into(),
            runs: 1,
            timeout_s: 1,
            environment: vec![],
            notes: vec![],
            image: "i".into(),
            callgrind: Ok(callgrind::Outcome {
                runs,
                ..Default::default()
            }),
            callgrind_runs: 2,
        };
        let (md, _) = render(&ctx, &[]);
        assert_eq!(
            md.matches("| utsuwa | msix | 1,000 | 2,000 |").count(),
            1,
            "{md}"
        );
        assert_eq!(md.matches("| qemu | msix |").count(), 1, "{md}");
        assert!(md.contains("| **10** |"), "{md}");
    }

    #[test]
    fn thousands() {
        assert_eq!(commas(0.0), "0");
        assert_eq!(commas(999.0), "999");
        assert_eq!(commas(1000.0), "1,000");
        assert_eq!(commas(14_485_486.0), "14,485,486");
        assert_eq!(commas(-4530.4), "-4,530");
    }
}
