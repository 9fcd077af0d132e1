//! PNG plots with plotters (bitmap backend; text through ab_glyph with DejaVu Sans from
//! Debian's fonts-dejavu-core, loaded at run time): the phase breakdown as stacked bars per size
//! and method (like the paper's Fig. 4), downtime vs size with the link's wire time, downtime vs
//! the number of processes.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::record::{
    METHODS, ORCHESTRATOR, PAGE_SERVER, PHASES, STOP_AND_COPY, UMS, UMS_HELD, UMS_POSTCOPY,
};
use crate::report::{find, summarize_runs, BenchFile, Group};

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// One per entry of PHASES.
const PHASE_COLORS: &[RGBColor] = &[
    RGBColor(0x9e, 0x9e, 0x9e),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x94, 0x67, 0xbd),
];

/// A method's colour in the line plots (fixed per method, whichever ran).
fn color_of(m: &str) -> RGBColor {
    match m {
        UMS => RGBColor(0xd6, 0x27, 0x28),
        UMS_POSTCOPY => RGBColor(0x8c, 0x56, 0x4b),
        UMS_HELD => RGBColor(0xe3, 0x77, 0xc2),
        STOP_AND_COPY => RGBColor(0x1f, 0x77, 0xb4),
        PAGE_SERVER => RGBColor(0x2c, 0xa0, 0x2c),
        ORCHESTRATOR => RGBColor(0x94, 0x67, 0xbd),
        _ => BLACK,
    }
}

/// A method's label above its bar, and what it stands for.
fn short(m: &str) -> (&str, &str) {
    match m {
        UMS => ("UMS", "UMS container-level"),
        UMS_POSTCOPY => ("UMS-PC", "UMS post-copy"),
        UMS_HELD => ("UMS-H", "UMS post-copy, held"),
        STOP_AND_COPY => ("S&C", "stop-and-copy (rsync)"),
        PAGE_SERVER => ("PS", "CRIU page-server"),
        ORCHESTRATOR => ("ORCH", "UMS orchestrator-level"),
        x => (x, x),
    }
}

fn load_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = (|| {
            let (path, bytes) = FONTS
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
                .ok_or("no font file: apt-get install fonts-dejavu-core")?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path}: not a usable font"))
        })();
    });
    res
}

type R<T> = Result<T, Box<dyn std::error::Error>>;
/// (min, median, max) of a method at an x value.
type Pick<'a> = &'a dyn Fn(&str, u64) -> Option<(f64, f64, f64)>;

fn methods_of(f: &BenchFile) -> Vec<&str> {
    METHODS
        .iter()
        .copied()
        .filter(|m| f.methods.iter().any(|x| x == m))
        .collect()
}

/// The sizes asked for and those that ran (the 0 MiB calibration), in order.
fn sizes_of(f: &BenchFile) -> Vec<u64> {
    let mut v: Vec<u64> = f
        .sizes_mib
        .iter()
        .copied()
        .chain(f.runs.iter().map(|r| r.size_mib))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Axis labels at whole numbers only (sizes, process counts, ms).
fn whole(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn phases(f: &BenchFile, g: &[Group], procs: u64, path: &Path) -> R<()> {
    let sizes = &sizes_of(f);
    let ms = methods_of(f);
    let ymax = g
        .iter()
        .filter(|x| x.procs == procs)
        .map(|x| {
            PHASES
                .iter()
                .filter_map(|p| x.median(&format!("phase.{p}")))
                .sum::<f64>()
        })
        .fold(1.0, f64::max)
        * 1.15;
    let legend = ms
        .iter()
        .map(|m| {
            let (a, b) = short(m);
            format!("{a} = {b}")
        })
        .collect::<Vec<_>>()
        .join(" | ");
    // room for every bar's label and for the legend under the axis
    let width = (sizes.len() * ms.len() * 55 + 200)
        .max(legend.len() * 7 + 300)
        .max(1000) as u32;
    let root = BitMapBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = sizes.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Migration phases (median), K={procs}, link {}",
                rate_label(f)
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(sizes.len().max(2) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < sizes.len() {
                format!("{} MiB", sizes[i as usize])
            } else {
                String::new()
            }
        })
        .y_label_formatter(&whole)
        .y_desc("ms")
        .x_desc(format!("memory size; bars: {legend}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let w = 0.8 / ms.len().max(1) as f64;
    for (pi, p) in PHASES.iter().enumerate() {
        let mut rects = Vec::new();
        for (si, &s) in sizes.iter().enumerate() {
            for (mi, m) in ms.iter().enumerate() {
                let Some(x) = find(g, m, s, procs) else {
                    continue;
                };
                let below: f64 = PHASES[..pi]
                    .iter()
                    .filter_map(|q| x.median(&format!("phase.{q}")))
                    .sum();
                let v = x.median(&format!("phase.{p}")).unwrap_or(0.0);
                let x0 = si as f64 - 0.4 + mi as f64 * w;
                rects.push(Rectangle::new(
                    [(x0 + 0.01, below), (x0 + w - 0.01, below + v)],
                    PHASE_COLORS[pi].filled(),
                ));
            }
        }
        let c = PHASE_COLORS[pi];
        chart
            .draw_series(rects)?
            .label(*p)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    // method names above the bars
    let mut labels = Vec::new();
    for (si, &s) in sizes.iter().enumerate() {
        for (mi, m) in ms.iter().enumerate() {
            let Some(x) = find(g, m, s, procs) else {
                continue;
            };
            let top: f64 = PHASES
                .iter()
                .filter_map(|q| x.median(&format!("phase.{q}")))
                .sum();
            let x0 = si as f64 - 0.4 + mi as f64 * w + w * 0.2;
            labels.push(Text::new(
                short(m).0.to_string(),
                (x0, top + ymax * 0.01),
                ("sans-serif", 13).into_font().color(&BLACK),
            ));
        }
    }
    chart.draw_series(labels)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn rate_label(f: &BenchFile) -> String {
    if f.rate == "off" {
        "unshaped".into()
    } else {
        f.rate.clone()
    }
}

/// Lines of the median tick-gap downtime (min-max whiskers) over `xs`.
#[allow(clippy::too_many_arguments)]
fn lines(
    f: &BenchFile,
    path: &Path,
    title: &str,
    x_desc: &str,
    xs: &[u64],
    pick: Pick<'_>,
    wire: Option<&dyn Fn(f64) -> f64>,
) -> R<()> {
    let ms = methods_of(f);
    let mut ymax: f64 = 1.0;
    for m in &ms {
        for &x in xs {
            if let Some((_, _, hi)) = pick(m, x) {
                ymax = ymax.max(hi);
            }
        }
    }
    let xmax = xs.iter().copied().max().unwrap_or(1).max(1) as f64;
    let xmin = xs.iter().copied().min().unwrap_or(0) as f64;
    if let Some(w) = wire {
        ymax = ymax.max(w(xmax));
    }
    ymax *= 1.15;
    let pad = ((xmax - xmin) * 0.05).max(0.5);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d((xmin - pad)..(xmax + pad), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_label_formatter(&whole)
        .y_label_formatter(&whole)
        .x_desc(x_desc)
        .y_desc("downtime, ms (largest tick gap)")
        .label_style(("sans-serif", 14))
        .draw()?;
    for m in &ms {
        let c = color_of(m);
        let pts: Vec<(f64, f64, f64, f64)> = xs
            .iter()
            .filter_map(|&x| pick(m, x).map(|(lo, med, hi)| (x as f64, lo, med, hi)))
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.2)),
                c.stroke_width(2),
            ))?
            .label(*m)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.2), 4, c.filled())))?;
        chart.draw_series(
            pts.iter()
                .map(|p| PathElement::new(vec![(p.0, p.1), (p.0, p.3)], c.stroke_width(1))),
        )?;
    }
    if let Some(w) = wire {
        let steps = 50;
        let line: Vec<(f64, f64)> = (0..=steps)
            .map(|i| {
                let x = xmin + (xmax - xmin) * i as f64 / steps as f64;
                (x, w(x))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(line, BLACK.stroke_width(1)))?
            .label("wire time of the memory (size / raw TCP)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn gap(g: &[Group], m: &str, size: u64, procs: u64) -> Option<(f64, f64, f64)> {
    let s = find(g, m, size, procs)?.figures.get("tick_gap_ms")?;
    Some((s.min, s.median, s.max))
}

/// Writes the plots next to the result file (downtime vs processes only with more than one
/// K); returns their paths.
pub fn render_all(f: &BenchFile, out: &Path) -> Result<Vec<PathBuf>, String> {
    load_font()?;
    let g = summarize_runs(&f.runs);
    let suffix = if f.rate == "off" {
        String::new()
    } else {
        format!("-{}", f.rate)
    };
    let k1 = f.procs.first().copied().unwrap_or(1);
    let mut done = Vec::new();
    let p = out.join(format!("phases{suffix}.png"));
    phases(f, &g, k1, &p).map_err(|e| e.to_string())?;
    done.push(p);

    let p = out.join(format!("downtime_vs_size{suffix}.png"));
    let raw = f.raw_tcp_mb_s;
    let wire = move |mib: f64| mib * 1.048_576 / raw.unwrap_or(f64::INFINITY) * 1e3;
    lines(
        f,
        &p,
        &format!("Downtime vs memory size, K={k1}, link {}", rate_label(f)),
        "memory size, MiB",
        &sizes_of(f),
        &|m, s| gap(&g, m, s, k1),
        raw.map(|_| &wire as &dyn Fn(f64) -> f64),
    )
    .map_err(|e| e.to_string())?;
    done.push(p);

    // one K is a single point per method: no plot
    if f.procs.len() < 2 {
        return Ok(done);
    }
    let size = f.sizes_mib.iter().copied().max().unwrap_or(0);
    let p = out.join(format!("downtime_vs_procs{suffix}.png"));
    lines(
        f,
        &p,
        &format!("Downtime vs processes, {size} MiB, link {}", rate_label(f)),
        "processes K",
        &f.procs,
        &|m, k| gap(&g, m, size, k),
        None,
    )
    .map_err(|e| e.to_string())?;
    done.push(p);
    Ok(done)
}
