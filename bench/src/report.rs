//! What one benchmark produces: a Markdown table, a bar chart, and a headline figure for the
//! summary of `bench all`.

/// One measured value against its same-run baseline and the target.
pub struct Headline {
    /// What was measured, e.g. "2 GiB upload, safe mode".
    pub figure: String,
    /// The measured value with its unit.
    pub value: String,
    /// The baseline it is compared with, with its value.
    pub baseline: String,
    /// The figure divided by the baseline (or by the target where there is no baseline).
    pub ratio: f64,
    /// The target, in words, e.g. ">= 0.90 x dd".
    pub target: String,
    /// Whether the target is met; `None` where there is no target.
    pub met: Option<bool>,
}

/// A horizontal bar chart: one bar per case, an optional line for the target.
pub struct Chart {
    /// File stem under `docs/img/`, e.g. `bench-durability`.
    pub name: String,
    pub title: String,
    /// Axis label, e.g. "MiB/s".
    pub unit: String,
    pub bars: Vec<(String, f64)>,
    /// A reference value drawn as a vertical line, with its label.
    pub line: Option<(String, f64)>,
}

pub struct Report {
    pub markdown: String,
    pub chart: Option<Chart>,
    pub headlines: Vec<Headline>,
}

impl Report {
    pub fn table(markdown: String) -> Report {
        Report {
            markdown,
            chart: None,
            headlines: Vec::new(),
        }
    }

    pub fn with_chart(mut self, chart: Chart) -> Report {
        self.chart = Some(chart);
        self
    }

    pub fn with_headline(mut self, h: Headline) -> Report {
        self.headlines.push(h);
        self
    }
}
