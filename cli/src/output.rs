//! The one way list and show commands print: text for a person, or with `--json` one JSON
//! document on stdout (an array for lists), for scripts. Every list and show command flattens
//! [`Format`] and prints through [`Format::print`], so the flag means the same everywhere.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Format {
    /// Print one JSON document (an array for lists) instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Format {
    /// Prints `value` as pretty JSON, or as what `text` makes of it (each line as given).
    pub fn print<T: Serialize + ?Sized>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            let out = text(value);
            if !out.is_empty() {
                println!("{}", out.trim_end_matches('\n'));
            }
        }
        Ok(())
    }
}

/// Lines of `items` as `line` renders each (the text of a list).
pub fn lines<T>(items: &[T], line: impl Fn(&T) -> String) -> String {
    items.iter().map(line).collect::<Vec<_>>().join("\n")
}
