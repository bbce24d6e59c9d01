//! Several runs of the comparison program and their spread (issue 16 asks for five
//! runs on the final commit, with the spread).
//!
//! [`run_repeatedly`] runs a program (the comparison, `compare --out DIR`, runs itself)
//! some number of times one after the other, keeping each run's standard output in
//! `DIR/run-K.txt` and its standard error in `DIR/run-K.stderr.txt`. [`parse`] reads the
//! table a run printed back into rows, and [`markdown`] lays the runs side by side:
//! each row's ratio to its reference (or its value, for a row without a ratio) per run,
//! then the smallest, the median and the largest.
//!
//! The table is read by its header: the comparison pads every column to its widest
//! cell and right-aligns the values, so the header's column names give where each
//! column starts, and a row is a line whose value ends exactly where the value column
//! ends. Section titles follow the dashed lines; notes (free text) are skipped.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// A row's absolute figure, as printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The number, in `unit`.
    pub number: f64,
    /// The unit: `µs`, `ms`, `s`, `MiB`, `MiB/s`, `x` (a speedup), empty (a count), or
    /// `/s` (tasks per second: `k/s` and `M/s` are scaled to it).
    pub unit: String,
    /// Digits after the decimal point, as printed.
    pub decimals: usize,
}

/// A row's ratio column.
#[derive(Debug, Clone, PartialEq)]
pub enum Ratio {
    /// No ratio.
    None,
    /// The row is its section's reference (`= reference`).
    Reference,
    /// The ratio to the named reference.
    Of(f64, String),
    /// Something else, kept as printed.
    Other(String),
}

/// One row of a run's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The section's short name (its title up to the first `:` or `,`).
    pub section: String,
    /// The figure's label, as printed (without the indentation of a sub-row).
    pub figure: String,
    /// The value; `None` where the comparison printed `n/a`.
    pub value: Option<Value>,
    /// The ratio to the section's reference.
    pub ratio: Ratio,
    /// The target, if any.
    pub target: String,
    /// `met`, `NOT MET`, `n/a (...)`, or empty.
    pub result: String,
}

/// What one run printed around its table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// The run's wall time in seconds.
    pub wall_s: Option<f64>,
    /// How busy the machine was just before the run, percent.
    pub busy_before_pct: Option<f64>,
    /// At most how much of the CPU other processes used during the run, percent.
    pub others_pct: Option<f64>,
    /// The count of targets met, not met and not judged, as printed.
    pub targets: Option<String>,
}

/// One run's table, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The rows, in order.
    pub rows: Vec<Row>,
    /// The figures around the table.
    pub summary: Summary,
}

/// Why a run's output could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No line with the table's header (`figure`, `value`, `ratio to reference`,
    /// `target`, `result`).
    NoHeader,
    /// A header, but no row under it.
    NoRows,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::NoHeader => f.write_str("no table header in the output"),
            ParseError::NoRows => f.write_str("a table header but no rows in the output"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Where the columns start, in characters (the figures contain `µ` and `×`).
struct Columns {
    value_end: usize,
    ratio: usize,
    target: usize,
    result: usize,
}

fn columns(header: &str) -> Option<Columns> {
    let chars: Vec<char> = header.chars().collect();
    let find = |name: &str, from: usize| -> Option<usize> {
        let name: Vec<char> = name.chars().collect();
        (from..chars.len().checked_sub(name.len())? + 1).find(|&i| chars[i..].starts_with(&name))
    };
    if !header.starts_with("figure ") {
        return None;
    }
    let ratio = find("  ratio to reference", 0)? + 2;
    let target = find("  target", ratio)? + 2;
    let result = find("  result", target)? + 2;
    let value_end = ratio - 2;
    // The value column is right-aligned: its name ends where its cells end.
    (value_end >= 5 && chars[value_end - 5..value_end].iter().collect::<String>() == "value")
        .then_some(Columns {
            value_end,
            ratio,
            target,
            result,
        })
}

/// The section's short name: its title up to the first `:` or `,` (titles carry
/// figures of the run, such as this process's RSS, after those).
fn section_name(title: &str) -> String {
    let end = title.find([':', ',']).unwrap_or(title.len());
    title[..end].trim().to_string()
}

/// A printed value: `n/a` is `Some(None)`; a number and a unit is `Some(Some(..))`;
/// anything else is `None`.
fn parse_value(s: &str) -> Option<Option<Value>> {
    if s == "n/a" {
        return Some(None);
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let number: f64 = s[..end].parse().ok()?;
    let decimals = s[..end].split_once('.').map_or(0, |(_, d)| d.len());
    let unit = s[end..].trim();
    let (number, unit) = match unit {
        "k/s" => (number * 1e3, "/s"),
        "M/s" => (number * 1e6, "/s"),
        u => (number, u),
    };
    Some(Some(Value {
        number,
        unit: unit.to_string(),
        decimals,
    }))
}

fn parse_ratio(s: &str) -> Ratio {
    if s.is_empty() {
        return Ratio::None;
    }
    if s == "= reference" {
        return Ratio::Reference;
    }
    let (head, of) = s.split_once(' ').unwrap_or((s, ""));
    match head.strip_suffix('x').map(str::parse::<f64>) {
        Some(Ok(x)) => Ratio::Of(x, of.trim().to_string()),
        _ => Ratio::Other(s.to_string()),
    }
}

fn cell(chars: &[char], from: usize, to: usize) -> String {
    let to = to.min(chars.len());
    let from = from.min(to);
    chars[from..to]
        .iter()
        .collect::<String>()
        .trim()
        .to_string()
}

/// The row on `line`, if it is one (else a note).
fn parse_row(line: &str, c: &Columns, section: &str) -> Option<Row> {
    let chars: Vec<char> = line.chars().collect();
    let v = c.value_end;
    // A row's value ends where the value column ends, two spaces before the ratio.
    if chars.len() < v
        || chars[v - 1] == ' '
        || chars[v..chars.len().min(v + 2)].iter().any(|&ch| ch != ' ')
    {
        return None;
    }
    let left: String = chars[..v].iter().collect();
    // The figure is padded and the value right-aligned, so two spaces at least lie
    // between them; no value contains two spaces.
    let split = left.rfind("  ")?;
    let figure = left[..split].trim();
    let value = parse_value(left[split..].trim())?;
    if figure.is_empty() {
        return None;
    }
    Some(Row {
        section: section.to_string(),
        figure: figure.to_string(),
        value,
        ratio: parse_ratio(&cell(&chars, c.ratio, c.target)),
        target: cell(&chars, c.target, c.result),
        result: cell(&chars, c.result, chars.len()),
    })
}

/// The number just before `suffix` in `text` (`26` of `26 s;` for `" s;"`).
fn number_before(text: &str, suffix: &str) -> Option<f64> {
    let at = text.find(suffix)?;
    let head = &text[..at];
    let start = head
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    head[start..].parse().ok()
}

/// Reads the table that one run of the comparison printed on its standard output.
///
/// # Errors
///
/// [`ParseError::NoHeader`] if there is no table header, [`ParseError::NoRows`] if no
/// row follows it.
pub fn parse(text: &str) -> Result<Run, ParseError> {
    let mut lines = text.lines();
    let c = lines
        .by_ref()
        .find_map(columns)
        .ok_or(ParseError::NoHeader)?;
    let mut rows = Vec::new();
    let mut section = String::new();
    let mut title_next = false;
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        if line.chars().all(|ch| ch == '-') {
            title_next = true;
        } else if title_next {
            section = section_name(line);
            title_next = false;
        } else if let Some(row) = parse_row(line, &c, &section) {
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return Err(ParseError::NoRows);
    }
    let first = text.lines().next().unwrap_or("");
    let summary = Summary {
        wall_s: number_before(first, " s; the machine"),
        busy_before_pct: number_before(first, "% busy before"),
        others_pct: number_before(first, "% of its CPU"),
        targets: lines
            .find_map(|l| l.strip_prefix("targets: "))
            .map(str::to_string),
    };
    Ok(Run { rows, summary })
}

// ---------------------------------------------------------------------------------
// Side by side
// ---------------------------------------------------------------------------------

/// A label split into text and the numbers inside parentheses, which may differ from
/// run to run (`pool CPU per request (µs; parent 54.9, workers 113.5; +2.2 µs)`);
/// rows are matched across runs with those numbers left out.
fn label_slots(figure: &str) -> (String, Vec<String>) {
    let mut key = String::new();
    let mut slots = Vec::new();
    let mut depth = 0usize;
    let mut num = String::new();
    let flush = |key: &mut String, slots: &mut Vec<String>, num: &mut String| {
        if num.chars().any(|c| c.is_ascii_digit()) {
            key.push('#');
            slots.push(std::mem::take(num));
        } else {
            key.push_str(num);
            num.clear();
        }
    };
    for ch in figure.chars() {
        if depth > 0 && (ch.is_ascii_digit() || matches!(ch, '.' | '+' | '-')) {
            num.push(ch);
            continue;
        }
        flush(&mut key, &mut slots, &mut num);
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        key.push(ch);
    }
    flush(&mut key, &mut slots, &mut num);
    (key, slots)
}

/// The label to show for a row matched across runs: the numbers in parentheses that
/// all its runs agree on, `…` for those they do not.
fn shown_label(figures: &[&str]) -> String {
    let Some(first) = figures.first() else {
        return String::new();
    };
    let (key, slots) = label_slots(first);
    let others: Vec<Vec<String>> = figures[1..].iter().map(|f| label_slots(f).1).collect();
    let mut out = String::new();
    let mut i = 0;
    for ch in key.chars() {
        if ch == '#' && i < slots.len() {
            let agree = others.iter().all(|o| o.get(i) == Some(&slots[i]));
            out.push_str(if agree { &slots[i] } else { "…" });
            i += 1;
        } else {
            out.push(ch);
        }
    }
    out
}

/// The median of some numbers (the mean of the middle two of an even count).
///
/// # Panics
///
/// If `xs` is empty.
pub fn median_f64(xs: &mut [f64]) -> f64 {
    assert!(!xs.is_empty());
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn show_value(number: f64, unit: &str, decimals: usize) -> String {
    match unit {
        // As the comparison prints tasks per second.
        "/s" if number >= 1e6 => format!("{:.2} M/s", number / 1e6),
        "/s" if number >= 1e3 => format!("{:.1} k/s", number / 1e3),
        "/s" => format!("{number:.0} /s"),
        "x" => format!("{number:.decimals$}x"),
        "" => format!("{number:.decimals$}"),
        u => format!("{number:.decimals$} {u}"),
    }
}

/// The smallest, median and largest of some (number, unit, decimals), as printed;
/// `None` if there are none or their units differ.
fn spread(nums: &[(f64, String, usize)]) -> Option<(String, String, String)> {
    let unit = &nums.first()?.1;
    if nums.iter().any(|(_, u, _)| u != unit) {
        return None;
    }
    let decimals = nums.iter().map(|x| x.2).max().unwrap_or(0);
    let mut xs: Vec<f64> = nums.iter().map(|x| x.0).collect();
    let med = median_f64(&mut xs);
    let f = |x: f64| show_value(x, unit, decimals);
    Some((f(xs[0]), f(med), f(xs[xs.len() - 1])))
}

/// A markdown cell: `|` escaped, and `<` where it would open a tag (`Vec<u8>`).
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let tag = c == '<'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '/');
        if c == '|' || tag {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a row of the side-by-side table shows per run.
#[derive(Clone, Copy, PartialEq)]
enum Shown {
    Ratio,
    Value,
}

/// The runs side by side, as markdown: a line per run (wall time, how busy the
/// machine was, the targets), then per row of the comparison its ratio to its
/// reference in each run (its value where it has no ratio), the smallest, median and
/// largest of those, the median of its value, and how often its target was met. `runs[k]` is run `k + 1`, or why it has
/// no table; rows missing from some runs say which runs they are in.
pub fn markdown(runs: &[Result<Run, String>]) -> String {
    let n = runs.len();
    let with_tables = runs.iter().filter(|r| r.is_ok()).count();
    // Rows matched across runs by (section, label without its varying numbers,
    // occurrence), in the order they first appear.
    type Key = (String, String, usize);
    let mut order: Vec<Key> = Vec::new();
    let mut cells: Vec<Vec<Option<&Row>>> = Vec::new();
    for (k, run) in runs.iter().enumerate() {
        let Ok(run) = run else { continue };
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut after: Option<usize> = None;
        for row in &run.rows {
            let base = (row.section.clone(), label_slots(&row.figure).0);
            let nth = seen.iter().filter(|s| **s == base).count();
            seen.push(base.clone());
            let key = (base.0, base.1, nth);
            let at = match order.iter().position(|o| *o == key) {
                Some(i) => i,
                None => {
                    let i = after.map_or(0, |a| a + 1);
                    order.insert(i, key);
                    cells.insert(i, vec![None; n]);
                    i
                }
            };
            cells[at][k] = Some(row);
            after = Some(at);
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | wall | machine busy before | other processes' CPU during (at most) | targets |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let pct = |x: Option<f64>| x.map_or("?".into(), |x| format!("{x:.0}%"));
    for (k, run) in runs.iter().enumerate() {
        match run {
            Ok(r) => {
                let s = &r.summary;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    k + 1,
                    s.wall_s.map_or("?".into(), |w| format!("{w:.0} s")),
                    pct(s.busy_before_pct),
                    pct(s.others_pct),
                    md(s.targets.as_deref().unwrap_or("?"))
                );
            }
            Err(why) => {
                let _ = writeln!(out, "| {} | no table: {} | | | |", k + 1, md(why));
            }
        }
    }
    out.push('\n');

    let _ = write!(out, "| figure | per run |");
    for k in 1..=n {
        let _ = write!(out, " run {k} |");
    }
    let _ = writeln!(out, " min – median – max | value: median | target |");
    let _ = write!(out, "|---|---|");
    for _ in 0..n {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out, "---|---:|---|");

    let mut section: Option<&str> = None;
    for (key, per_run) in order.iter().zip(&cells) {
        let present: Vec<&Row> = per_run.iter().flatten().copied().collect();
        if present.is_empty() {
            continue;
        }
        if section != Some(key.0.as_str()) {
            section = Some(&key.0);
            let _ = writeln!(out, "| **{}** |{}", md(&key.0), " |".repeat(n + 4));
        }
        let ratio_of = present.iter().find_map(|r| match &r.ratio {
            Ratio::Of(_, of) => Some(of.clone()),
            _ => None,
        });
        let shown = if ratio_of.is_some() {
            Shown::Ratio
        } else {
            Shown::Value
        };
        let mut label = shown_label(
            &present
                .iter()
                .map(|r| r.figure.as_str())
                .collect::<Vec<_>>(),
        );
        if present.len() < with_tables {
            let ks: Vec<String> = per_run
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_some())
                .map(|(k, _)| (k + 1).to_string())
                .collect();
            let _ = write!(label, " (only in run {})", ks.join(", "));
        }
        let per = match (
            &ratio_of,
            present.iter().any(|r| r.ratio == Ratio::Reference),
        ) {
            (Some(of), _) => format!("ratio to {of}"),
            (None, true) => "value (the reference)".into(),
            (None, false) => "value".into(),
        };
        let _ = write!(out, "| {} | {} |", md(&label), md(&per));
        // (number, unit, decimals) per run, for the spread.
        let mut nums: Vec<(f64, String, usize)> = Vec::new();
        for r in per_run {
            let text = match (r, shown) {
                (None, _) => "—".to_string(),
                (Some(r), Shown::Ratio) => match &r.ratio {
                    Ratio::Of(x, _) => {
                        nums.push((*x, "x".into(), 2));
                        format!("{x:.2}x")
                    }
                    Ratio::Other(s) => s.clone(),
                    _ => "—".into(),
                },
                (Some(r), Shown::Value) => match &r.value {
                    Some(v) => {
                        nums.push((v.number, v.unit.clone(), v.decimals));
                        show_value(v.number, &v.unit, v.decimals)
                    }
                    None => "n/a".into(),
                },
            };
            let _ = write!(out, " {} |", md(&text));
        }
        let values: Vec<(f64, String, usize)> = present
            .iter()
            .filter_map(|r| r.value.as_ref())
            .map(|v| (v.number, v.unit.clone(), v.decimals))
            .collect();
        let value = match spread(&values) {
            Some((_, med, _)) => med,
            None if values.is_empty() => "—".into(),
            None => "units differ".into(),
        };
        let spread = match spread(&nums) {
            Some((lo, med, hi)) => format!("{lo} – {med} – {hi}"),
            None if nums.is_empty() => "—".into(),
            None => "units differ".into(),
        };
        let target = present
            .iter()
            .map(|r| r.target.as_str())
            .find(|t| !t.is_empty())
            .unwrap_or("");
        let judged: Vec<&str> = present
            .iter()
            .map(|r| r.result.as_str())
            .filter(|r| *r == "met" || *r == "NOT MET")
            .collect();
        let target = if target.is_empty() {
            String::new()
        } else if judged.is_empty() {
            format!("{target}: not judged")
        } else {
            let met = judged.iter().filter(|r| **r == "met").count();
            format!("{target}: met in {met} of {}", judged.len())
        };
        let _ = writeln!(out, " {} | {} | {} |", md(&spread), md(&value), md(&target));
    }
    out
}

// ---------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------

/// `DIR/run-K.txt`, where run `k`'s standard output is kept.
pub fn output_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("run-{k}.txt"))
}

/// Runs `program` with `args` `runs` times, one after the other, its standard input
/// empty, its standard output kept in `out/run-K.txt` and its standard error in
/// `out/run-K.stderr.txt` (K from 1; `out` is created if need be, earlier files of the
/// same names replaced). Returns each run's table, or why it has none (the program
/// failed, or printed no table). `progress` is called after each run with its number,
/// its wall time in seconds and its result.
///
/// # Errors
///
/// If `out` or a file in it cannot be created or read, or `program` cannot be started.
pub fn run_repeatedly(
    program: &Path,
    args: &[String],
    runs: usize,
    out: &Path,
    mut progress: impl FnMut(usize, f64, &Result<Run, String>),
) -> io::Result<Vec<Result<Run, String>>> {
    std::fs::create_dir_all(out)?;
    let mut results = Vec::with_capacity(runs);
    for k in 1..=runs {
        let stdout_path = output_path(out, k);
        let stderr_path = out.join(format!("run-{k}.stderr.txt"));
        let stdout = std::fs::File::create(&stdout_path)?;
        let stderr = std::fs::File::create(&stderr_path)?;
        let t = Instant::now();
        let status = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", program.display())))?;
        let wall = t.elapsed().as_secs_f64();
        let result = if status.success() {
            let text = std::fs::read_to_string(&stdout_path)?;
            parse(&text).map_err(|e| format!("{e} ({})", stdout_path.display()))
        } else {
            Err(format!("{status} (see {})", stderr_path.display()))
        };
        progress(k, wall, &result);
        results.push(result);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real run: `compare --quick` on this repository, 2 CPUs.
    const SAMPLE: &str = include_str!("../tests/data/compare-quick.txt");

    fn row<'a>(run: &'a Run, section: &str, figure: &str) -> &'a Row {
        let found: Vec<&Row> = run
            .rows
            .iter()
            .filter(|r| r.section == section && r.figure == figure)
            .collect();
        assert_eq!(found.len(), 1, "{section} / {figure}: {found:?}");
        found[0]
    }

    fn value(number: f64, unit: &str, decimals: usize) -> Option<Value> {
        Some(Value {
            number,
            unit: unit.into(),
            decimals,
        })
    }

    #[test]
    fn reads_every_row_of_a_real_run() {
        let run = parse(SAMPLE).expect("the sample parses");
        // Every line of the sample with a value in the value column, and no other.
        assert_eq!(run.rows.len(), 100);
        let sections: Vec<&str> = run.rows.iter().map(|r| r.section.as_str()).collect();
        let mut names = sections.clone();
        names.dedup();
        assert_eq!(
            names,
            [
                "memory",
                "start-up",
                "latency",
                "service",
                "throughput",
                "cpu scaling",
                "payload",
                "sandbox",
                "remote workers",
                "start-up again at the end of the run",
            ]
        );
        // Notes are not rows.
        assert!(run
            .rows
            .iter()
            .all(|r| !r.figure.starts_with('(') && !r.figure.contains("PSS MiB")));
    }

    #[test]
    fn reads_values_ratios_targets_and_results() {
        let run = parse(SAMPLE).unwrap();
        let r = row(&run, "latency", "procpool apply, forkserver");
        assert_eq!(r.value, value(3.4, "µs", 1));
        assert_eq!(r.ratio, Ratio::Of(1.24, "raw pipe".into()));
        assert_eq!(r.target, "<= 1.5x raw pipe, <= spawn_blocking");
        assert_eq!(r.result, "met");

        let r = row(&run, "latency", "raw pipe round trip, 8 B, two processes");
        assert_eq!(r.ratio, Ratio::Reference);
        assert_eq!(r.value, value(2.8, "µs", 1));
        assert_eq!((r.target.as_str(), r.result.as_str()), ("", ""));

        let r = row(&run, "service", "raw blocking pipe round trip, p50");
        assert_eq!(
            (r.value.clone(), r.ratio.clone()),
            (value(3.0, "µs", 1), Ratio::None)
        );

        // A sub-row, indented in the table.
        let r = row(&run, "service", "the same, ratio to the raw pipe");
        assert_eq!(r.ratio, Ratio::Of(23.37, "raw pipe".into()));

        let r = row(&run, "service", "open loop 16000/s × 100 µs: pool p50");
        assert_eq!(r.value, value(708507.5, "µs", 1));
        assert_eq!(r.ratio, Ratio::Of(20.82, "spawn_blocking".into()));
        assert_eq!(r.result, "NOT MET");

        let r = row(
            &run,
            "service",
            "voluntary switches per apply, pool and workers",
        );
        assert_eq!(r.value, value(1.68, "", 2));

        let r = row(&run, "throughput", "tokio spawn_blocking, one per task");
        assert_eq!(r.value, value(104.4e3, "/s", 1));
        let r = row(&run, "throughput", "procpool map, automatic chunks");
        assert_eq!(r.value, value(20.48e6, "/s", 2));
        assert_eq!(r.result, "n/a (needs --python)");

        let r = row(&run, "cpu scaling", "2 forked children, no IPC: speedup");
        assert_eq!(
            (r.value.clone(), r.ratio.clone()),
            (value(1.13, "x", 2), Ratio::Reference)
        );

        let r = row(&run, "payload", "procpool echo Vec<u8> 16 MiB");
        assert_eq!(r.value, value(690.0, "MiB/s", 0));
        assert_eq!(r.ratio, Ratio::Of(0.41, "raw RT".into()));

        // The same label in two sections is two rows.
        let a = row(&run, "start-up", "procpool ready pool of 2, fork");
        let b = row(
            &run,
            "start-up again at the end of the run",
            "procpool ready pool of 2, fork",
        );
        assert_eq!(
            (a.value.clone(), b.value.clone()),
            (value(3.10, "ms", 2), value(24.92, "ms", 2))
        );

        assert_eq!(
            run.summary,
            Summary {
                wall_s: Some(26.0),
                busy_before_pct: Some(0.0),
                others_pct: Some(49.0),
                targets: Some("9 met, 9 not met, 3 not judged".into()),
            }
        );
    }

    #[test]
    fn reads_a_table_of_other_widths_and_n_a() {
        // Columns as the comparison pads them, narrower; a note longer than the value
        // column; a value of n/a.
        let text = "\
procpool quick comparison: 2 CPUs, no Python figures, 3 s; the machine was 5% busy before the run, and other processes used at most about 7% of its CPU during it

figure       value  ratio to reference  target     result
-------------------------------------------------------------
memory: idle worker (VmRSS)
ref row     1.0 ms  = reference
a  b        2.0 ms  2.00x ref           <= 3x ref  met
gone           n/a
  (a note, long enough to reach past the value column: 1 2 3 4 5 6)
";
        let run = parse(text).unwrap();
        let figures: Vec<&str> = run.rows.iter().map(|r| r.figure.as_str()).collect();
        assert_eq!(figures, ["ref row", "a  b", "gone"]);
        assert_eq!(run.rows[1].ratio, Ratio::Of(2.0, "ref".into()));
        assert_eq!(run.rows[1].result, "met");
        assert_eq!(run.rows[2].value, None);
        assert_eq!(run.summary.wall_s, Some(3.0));
        assert_eq!(run.summary.targets, None);
    }

    #[test]
    fn output_without_a_table_is_an_error() {
        assert_eq!(parse(""), Err(ParseError::NoHeader));
        assert_eq!(
            parse("unknown argument \"--x\"; try --help\n"),
            Err(ParseError::NoHeader)
        );
        let header_only = SAMPLE.lines().take(4).collect::<Vec<_>>().join("\n");
        assert_eq!(parse(&header_only), Err(ParseError::NoRows));
    }

    #[test]
    fn labels_match_across_runs_without_their_numbers_in_parentheses() {
        let (a, sa) = label_slots("pool CPU per request (µs; parent 54.9, workers 113.5; +2.2 µs)");
        let (b, sb) = label_slots("pool CPU per request (µs; parent 50.1, workers 113.5; -0.4 µs)");
        assert_eq!(a, b);
        assert_eq!(sa, ["54.9", "113.5", "+2.2"]);
        assert_eq!(sb, ["50.1", "113.5", "-0.4"]);
        assert_eq!(
            shown_label(&[
                "pool CPU per request (µs; parent 54.9, workers 113.5; +2.2 µs)",
                "pool CPU per request (µs; parent 50.1, workers 113.5; -0.4 µs)",
            ]),
            "pool CPU per request (µs; parent …, workers 113.5; … µs)"
        );
        // Numbers outside parentheses tell rows apart.
        assert_ne!(
            label_slots("open loop 2000/s: pool p50").0,
            label_slots("open loop 16000/s: pool p50").0
        );
        assert_eq!(label_slots("fork-server (x-ray)").0, "fork-server (x-ray)");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_f64(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f64(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_f64(&mut [7.0]), 7.0);
    }

    /// The sample with one row's figures changed, one row gone and the CPU row's
    /// label changed, as a second run would differ.
    fn second_run() -> String {
        SAMPLE
            .replace(
                "procpool apply, forkserver                                                                         3.4 µs  1.24x",
                "procpool apply, forkserver                                                                         3.6 µs  1.30x",
            )
            .replace("procpool echo Vec<u8> 1 MiB                                                                    1373 MiB/s", "procpool echo Vec<u8> 1 MiB                                                                    1400 MiB/s")
            .replace("parent 54.9, workers 113.5; +2.2 µs)        168.4 µs", "parent 51.0, workers 113.5; -1.0 µs)        164.5 µs")
            .lines()
            .filter(|l| !l.starts_with("procspawn Pool(1) spawn + join"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn lays_runs_side_by_side_with_their_spread() {
        let second = second_run();
        assert_ne!(second, SAMPLE);
        let runs = vec![
            parse(SAMPLE).map_err(|e| e.to_string()),
            parse(&second).map_err(|e| e.to_string()),
            Err("exit status: 1 (see run-3.stderr.txt)".to_string()),
        ];
        let md = markdown(&runs);
        let lines: Vec<&str> = md.lines().collect();
        let find = |start: &str| -> &str {
            let found: Vec<&&str> = lines.iter().filter(|l| l.starts_with(start)).collect();
            assert_eq!(found.len(), 1, "{start}: {found:?}\n{md}");
            found[0]
        };
        assert_eq!(
            find("| 1 |"),
            "| 1 | 26 s | 0% | 49% | 9 met, 9 not met, 3 not judged |"
        );
        assert_eq!(
            find("| 3 |"),
            "| 3 | no table: exit status: 1 (see run-3.stderr.txt) | | | |"
        );
        assert_eq!(
            find("| procpool apply, forkserver |"),
            "| procpool apply, forkserver | ratio to raw pipe | 1.24x | 1.30x | — | 1.24x – 1.27x – 1.30x | 3.5 µs | <= 1.5x raw pipe, <= spawn_blocking: met in 2 of 2 |"
        );
        assert_eq!(
            find("| procspawn Pool(1) spawn + join"),
            "| procspawn Pool(1) spawn + join (only in run 1) | ratio to raw pipe | 35.97x | — | — | 35.97x – 35.97x – 35.97x | 99.7 µs |  |"
        );
        // A reference: its value.
        assert_eq!(
            find("| raw pipe round trip, 8 B, two processes |"),
            "| raw pipe round trip, 8 B, two processes | value (the reference) | 2.8 µs | 2.8 µs | — | 2.8 µs – 2.8 µs – 2.8 µs | 2.8 µs |  |"
        );
        // A row without a ratio: its value, tasks per second scaled as printed.
        assert!(
            find("| tokio spawn_blocking, one per task |").contains("| 104.4 k/s | 104.4 k/s |")
        );
        // Escaped for markdown.
        assert!(find("| procpool echo Vec\\<u8> 1 MiB |")
            .contains("| 0.39x | 0.39x | — | 0.39x – 0.39x – 0.39x | 1386 MiB/s |"));
        // The numbers of a label that differ between runs are left out.
        assert!(md.contains(
            "| open loop 2000/s × 100 µs: pool CPU per request (µs; parent …, workers 113.5; … µs) | ratio to spawn_blocking | 1.01x | 1.01x |"
        ));
        assert!(find("| open loop 2000/s × 100 µs: pool p50 |").contains("met in 0 of 2"));
        // Each section once, in order, and rows under the one they belong to.
        let sections: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("| **"))
            .copied()
            .collect();
        assert_eq!(sections.len(), 10, "{sections:?}");
        let at = |s: &str| lines.iter().position(|l| l.starts_with(s)).unwrap();
        assert!(at("| **latency**") < at("| procspawn Pool(1) spawn + join"));
        assert!(at("| procspawn Pool(1) spawn + join") < at("| **service**"));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("procpool-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn runs_a_program_and_keeps_each_output() {
        let dir = scratch("runs");
        let sample = dir.with_extension("sample.txt");
        std::fs::write(&sample, SAMPLE).unwrap();
        // Run 1 prints the sample; run 2 fails; run 3 prints no table.
        let script = format!(
            "n=$(ls {d} | grep -c stderr); echo progress >&2; \
             case $n in 1) cat {s};; 2) exit 3;; *) echo nothing;; esac",
            d = dir.display(),
            s = sample.display()
        );
        let mut seen = Vec::new();
        let runs = run_repeatedly(
            Path::new("/bin/sh"),
            &["-c".into(), script],
            3,
            &dir,
            |k, wall, r| seen.push((k, wall >= 0.0, r.is_ok())),
        )
        .unwrap();
        assert_eq!(seen, [(1, true, true), (2, true, false), (3, true, false)]);
        assert_eq!(runs[0].as_ref().unwrap().rows.len(), 100);
        assert!(runs[1].as_ref().unwrap_err().starts_with("exit status: 3"));
        assert!(runs[2].as_ref().unwrap_err().starts_with("no table header"));
        assert_eq!(
            std::fs::read_to_string(output_path(&dir, 1)).unwrap(),
            SAMPLE
        );
        assert_eq!(
            std::fs::read_to_string(output_path(&dir, 3)).unwrap(),
            "nothing\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("run-2.stderr.txt")).unwrap(),
            "progress\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&sample).unwrap();
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error() {
        let dir = scratch("nostart");
        let err = run_repeatedly(
            Path::new("/nonexistent/compare"),
            &[],
            2,
            &dir,
            |_, _, _| {},
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/compare"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_output_directory_that_cannot_be_made_is_an_error() {
        let file = scratch("notadir");
        std::fs::write(&file, "").unwrap();
        let err = run_repeatedly(
            Path::new("/bin/true"),
            &[],
            1,
            &file.join("sub"),
            |_, _, _| {},
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
        std::fs::remove_file(&file).unwrap();
    }
}
