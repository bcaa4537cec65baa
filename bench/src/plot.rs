//! SVG bar charts of benchmark results (plotters' SVG backend). The text is written as SVG
//! text and drawn by whatever shows the picture, so no font file is read and no font parser is
//! linked (docs/decisions.md, "Advisories").

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::report::Chart;

/// Draws `chart` to `dir/<name>.svg`; returns the file name.
pub fn draw(chart: &Chart, dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    // Charts were PNGs before: one left beside its SVG would be a stale picture in docs/img.
    let _ = std::fs::remove_file(dir.join(format!("{}.png", chart.name)));
    let file = format!("{}.svg", chart.name);
    let path = dir.join(&file);
    let n = chart.bars.len().max(1);
    let height = 120 + 50 * n as u32;
    let root = SVGBackend::new(&path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let max = chart
        .bars
        .iter()
        .map(|(_, v)| *v)
        .chain(chart.line.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.18;
    // The first bar is drawn at the top: segment n-1-i.
    let labels: Vec<String> = chart.bars.iter().rev().map(|(l, _)| l.clone()).collect();
    let row = |i: usize| n - 1 - i;
    let label_width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(8) as u32 * 8 + 20;
    // The reference line is named in the caption: a legend box would cover bar labels.
    let caption = match &chart.line {
        Some((label, _)) => format!("{} (red line: {label})", chart.title),
        None => chart.title.clone(),
    };
    let mut ctx = ChartBuilder::on(&root)
        .caption(&caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(label_width)
        // A discrete range includes its end: 0..n-1 is n rows.
        .build_cartesian_2d(0.0..max, (0..n - 1).into_segmented())
        .map_err(|e| anyhow!("{e}"))?;
    ctx.configure_mesh()
        .disable_y_mesh()
        .x_desc(chart.unit.as_str())
        .x_label_formatter(&|v| format_value(*v))
        .y_labels(n)
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let palette = [RGBColor(52, 101, 164), RGBColor(115, 115, 115)];
    ctx.draw_series(chart.bars.iter().enumerate().map(|(i, (_, v))| {
        let color = if i == 0 { palette[1] } else { palette[0] };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (*v, SegmentValue::Exact(row(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(7, 7, 0, 0);
        bar
    }))
    .map_err(|e| anyhow!("{e}"))?;
    ctx.draw_series(chart.bars.iter().enumerate().map(|(i, (_, v))| {
        Text::new(
            format_value(*v),
            (*v + max * 0.01, SegmentValue::CenterOf(row(i))),
            ("sans-serif", 15).into_font(),
        )
    }))
    .map_err(|e| anyhow!("{e}"))?;
    if let Some((_, v)) = &chart.line {
        ctx.draw_series(std::iter::once(PathElement::new(
            vec![(*v, SegmentValue::Exact(0)), (*v, SegmentValue::Last)],
            RED.stroke_width(2),
        )))
        .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_its_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test-chart.png"), b"old").unwrap();
        let chart = Chart {
            name: "test-chart".to_string(),
            title: "A chart".to_string(),
            unit: "MiB/s".to_string(),
            bars: vec![("baseline".to_string(), 100.0), ("bitsd".to_string(), 91.0)],
            line: Some(("target".to_string(), 90.0)),
        };
        // BENCH_PLOT_DIR keeps the picture for a look.
        let out = std::env::var_os("BENCH_PLOT_DIR").map_or(dir.path().to_path_buf(), Into::into);
        let file = draw(&chart, &out).unwrap();
        assert_eq!(file, "test-chart.svg");
        let svg = std::fs::read_to_string(out.join(&file)).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "A chart (red line: target)",
            "baseline",
            "bitsd",
            "91.0",
            "MiB/s",
        ] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
        if out == dir.path() {
            assert!(!dir.path().join("test-chart.png").exists());
        }
    }
}
