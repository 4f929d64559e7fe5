//! The comparison's chart (SVG, drawn with plotters): single-member throughput against client
//! count for the main workloads, and the latency CDF of `put` at the highest client count.

use std::path::Path;

use plotters::prelude::*;

use super::markdown::stats;
use super::{Case, Results};

const ETCD: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const CAIRN: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const WORKLOADS: [&str; 3] = ["put", "range-s", "txn-put"];

fn color(server: &str, workload: usize) -> RGBAColor {
    let base = if server == "etcd" { ETCD } else { CAIRN };
    base.mix(1.0 - 0.3 * workload as f64)
}

pub fn draw(r: &Results, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    throughput(r, &left)?;
    cdf(r, &right)?;
    root.present()?;
    Ok(())
}

fn throughput<DB: DrawingBackend>(
    r: &Results,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut clients: Vec<usize> = r
        .samples
        .iter()
        .filter(|s| s.members == 1 && WORKLOADS.contains(&s.case.workload.as_str()))
        .map(|s| s.case.clients)
        .collect();
    clients.sort();
    clients.dedup();
    let mut series = Vec::new();
    let mut max = 1.0f64;
    for (wi, w) in WORKLOADS.iter().enumerate() {
        for server in ["etcd", "cairn"] {
            let pts: Vec<(f64, f64)> = clients
                .iter()
                .filter_map(|&c| {
                    let case = Case {
                        workload: w.to_string(),
                        clients: c,
                    };
                    stats(r, 1, server, &case).map(|s| (c as f64, s.ops))
                })
                .collect();
            max = pts.iter().map(|p| p.1).fold(max, f64::max);
            series.push((format!("{server} {w}"), color(server, wi), pts));
        }
    }
    let hi = clients.last().copied().unwrap_or(256).max(2) as f64 * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput, single member (ops/s)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0.9f64..hi).log_scale(), 0f64..max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc("ops/s")
        .draw()?;
    for (label, c, pts) in series {
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)).point_size(3))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

/// x is the number of nines (0.9 → 1, 0.99 → 2…), y the latency in ms (log scale).
fn cdf<DB: DrawingBackend>(
    r: &Results,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let clients = r
        .samples
        .iter()
        .filter(|s| s.members == 1 && s.case.workload == "put")
        .map(|s| s.case.clients)
        .max()
        .unwrap_or(1);
    let case = Case {
        workload: "put".into(),
        clients,
    };
    let mut series = Vec::new();
    let (mut lo, mut hi) = (f64::MAX, 0.01f64);
    for server in ["etcd", "cairn"] {
        let Some(s) = stats(r, 1, server, &case) else {
            continue;
        };
        let pts: Vec<(f64, f64)> = s
            .median_run
            .cdf
            .iter()
            .filter(|(q, _)| *q < 1.0)
            .map(|(q, ms)| (-(1.0 - q).log10(), ms.max(0.001)))
            .collect();
        for p in &pts {
            lo = lo.min(p.1);
            hi = hi.max(p.1);
        }
        series.push((server, pts));
    }
    let lo = if lo == f64::MAX { 0.01 } else { lo * 0.8 };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("put latency CDF, {clients} clients, single member"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..5f64, (lo..hi * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("p{}", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()?;
    for (server, pts) in series {
        let c = color(server, 0);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)).point_size(3))?
            .label(server)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

/// The legend, in the same place and style on both panels.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
