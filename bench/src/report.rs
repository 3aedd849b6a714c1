//! Statistics and the Markdown tables every benchmark prints.

use std::time::Duration;

/// Sorted samples in nanoseconds.
pub(crate) struct Samples(Vec<u64>);

impl Samples {
    pub(crate) fn new(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        Samples(v)
    }
    /// Nearest-rank percentile (`p` in 0..=1); 0 when empty.
    pub(crate) fn pct(&self, p: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        let rank = ((self.0.len() as f64) * p).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
    pub(crate) fn max(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

pub(crate) fn dur(ns: u64) -> String {
    match ns {
        n if n < 10_000 => format!("{n} ns"),
        n if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n => format!("{:.2} s", n as f64 / 1e9),
    }
}

pub(crate) fn rate(n: f64) -> String {
    if n >= 10_000.0 {
        format!("{:.0}", n)
    } else {
        format!("{:.1}", n)
    }
}

/// A Markdown table of figures; `met` is None for figures without a goal.
pub(crate) struct Table {
    title: String,
    rows: Vec<(String, String, String, Option<bool>)>,
}

impl Table {
    pub(crate) fn new(title: impl Into<String>) -> Self {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }
    pub(crate) fn info(&mut self, figure: impl Into<String>, value: impl Into<String>) {
        self.rows
            .push((figure.into(), value.into(), "—".into(), None));
    }
    pub(crate) fn goal(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
        met: bool,
    ) {
        self.rows
            .push((figure.into(), value.into(), goal.into(), Some(met)));
    }
    pub(crate) fn print(&self) {
        println!("### {}\n", self.title);
        println!("| figure | measured | goal | met? |");
        println!("|---|---:|---|---|");
        for (f, v, g, m) in &self.rows {
            let m = match m {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            println!("| {f} | {v} | {g} | {m} |");
        }
        println!();
    }
}

/// The 1-minute load average now: the machine is shared, so every figure carries it.
pub(crate) fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A Markdown table whose rows also carry the load average at the time they were measured.
pub(crate) struct LoadTable {
    title: String,
    rows: Vec<[String; 5]>,
}

impl LoadTable {
    pub(crate) fn new(title: impl Into<String>) -> Self {
        LoadTable {
            title: title.into(),
            rows: Vec::new(),
        }
    }
    pub(crate) fn row(&mut self, figure: impl Into<String>, value: impl Into<String>, load: &str) {
        self.rows.push([
            figure.into(),
            value.into(),
            "—".into(),
            String::new(),
            load.into(),
        ]);
    }
    pub(crate) fn goal(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        goal: &str,
        met: bool,
        load: &str,
    ) {
        self.rows.push([
            figure.into(),
            value.into(),
            goal.into(),
            if met { "yes".into() } else { "**no**".into() },
            load.into(),
        ]);
    }
    pub(crate) fn print(&self) {
        println!("### {}\n", self.title);
        println!("| figure | measured | goal | met? | load (1 min) |");
        println!("|---|---:|---|---|---:|");
        for [f, v, g, m, l] in &self.rows {
            println!("| {f} | {v} | {g} | {m} | {l} |");
        }
        println!();
    }
}

pub(crate) fn p50_p99(s: &Samples) -> String {
    format!("{} / {}", dur(s.pct(0.5)), dur(s.pct(0.99)))
}

pub(crate) fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}
