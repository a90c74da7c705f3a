//! `replica check --format html`: one self-contained page (inline CSS and SVG; no
//! script, font or stylesheet is fetched) with the case table, every failure, and
//! for each traced case a plot of the error along the forward pass.

use replica_check::{format_multiple, Report, Rule, TraceReport, TraceRow, NOISE_LIMIT};

use crate::outcome::{self, Outcome, Verdict};
use crate::output::{cell_style, Table, BAD, GOOD};

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 17px; margin-top: 32px; padding-top: 14px; border-top: 1px solid #ddd; }
h3 { font-size: 15px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e6e6e6; text-align: left; white-space: nowrap; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; } .bad { color: #c62828; font-weight: 600; } .warn { color: #9a6700; }
.note { color: #555; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
.plot { overflow-x: auto; }
svg text { font: 11px sans-serif; fill: #333; }
svg .title { font-weight: 600; }
.grid { stroke: #e8e8e8; } .axis { stroke: #888; fill: none; }
path.m, path.a { fill: none; stroke-width: 1.5; }
.m { stroke: #1f6fb4; fill: #1f6fb4; } .a { stroke: #2e8b57; fill: #2e8b57; }
circle.fail { stroke: #c62828; fill: #c62828; } circle.clamped { fill: #fff; }
.limit { stroke: #c62828; stroke-dasharray: 6 4; } text.limit { stroke: none; fill: #c62828; }
.diverge { stroke: #c62828; stroke-width: 1.5; stroke-dasharray: 2 3; }
text.diverge, text.first { stroke: none; fill: #c62828; font-weight: 600; }
text.none { fill: #aaa; }
.hit { fill: transparent; } .hit:hover { fill: rgba(0, 0, 0, 0.05); }
";

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Terminal text (colour codes dropped) as an escaped `<pre>` block.
fn pre(text: &str) -> String {
    format!(
        "<pre>{}</pre>\n",
        escape(anstream::adapter::strip_str(text).to_string().trim_end())
    )
}

/// The whole page.
pub fn render(title: &str, device: &str, rule: Rule, outcomes: &[Outcome]) -> String {
    let cases = if outcomes.len() == 1 { "case" } else { "cases" };
    let heading = escape(&format!("replica check: {title}"));
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{heading}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{heading}</h1>\n<p class=\"note\">{} {cases} on {}</p>\n\
         <p>{}</p>\n",
        outcomes.len(),
        escape(device),
        escape(&outcome::rule_note(rule)),
    );
    let sections: Vec<Option<String>> = outcomes
        .iter()
        .enumerate()
        .map(|(i, outcome)| case_section(i, outcome, rule))
        .collect();
    out.push_str(&table(&outcome::summary_table(outcomes), |row| {
        sections[row].as_ref().map(|_| format!("case-{row}"))
    }));
    let all_pass = outcomes.iter().all(|o| o.verdict() == Verdict::Pass);
    out.push_str(&format!(
        "<p class=\"{}\">{}</p>\n",
        if all_pass { "ok" } else { "bad" },
        escape(&outcome::tally(outcomes))
    ));
    for section in sections.into_iter().flatten() {
        out.push_str(&section);
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// A table; the first cell of row `i` links to `#link(i)` when there is one.
fn table(table: &Table, link: impl Fn(usize) -> Option<String>) -> String {
    let numeric = table.numeric_columns();
    let mut out = String::from("<table>\n<tr>");
    for header in &table.headers {
        out.push_str(&format!("<th>{}</th>", escape(header)));
    }
    out.push_str("</tr>\n");
    for (i, row) in table.rows.iter().enumerate() {
        out.push_str("<tr>");
        for (col, cell) in row.iter().enumerate() {
            let mut classes = Vec::new();
            if numeric.get(col) == Some(&true) {
                classes.push("num");
            }
            let style = cell_style(&table.headers[col], cell);
            if style == GOOD {
                classes.push("ok");
            } else if style == BAD {
                classes.push("bad");
            }
            let class = if classes.is_empty() {
                String::new()
            } else {
                format!(" class=\"{}\"", classes.join(" "))
            };
            let text = escape(cell);
            match link(i) {
                Some(id) if col == 0 => out.push_str(&format!("<td{class}><a href=\"#{id}\">{text}</a></td>")),
                _ => out.push_str(&format!("<td{class}>{text}</td>")),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// A case's error, its trace (plot first: it says where), and its failed tensors;
/// `None` when it has none of these.
fn case_section(index: usize, outcome: &Outcome, rule: Rule) -> Option<String> {
    let mut body = String::new();
    if outcome.verdict() == Verdict::Error {
        body.push_str("<p class=\"bad\">Could not run on its bundle:</p>\n");
        body.push_str(&pre(&outcome.input_error().unwrap_or_default()));
    }
    if let Some(trace) = &outcome.trace {
        body.push_str(&trace_section(outcome, trace, rule));
    }
    if let (Ok(report), Verdict::Fail) = (&outcome.result, outcome.verdict()) {
        if !report.passed() {
            body.push_str(&failures(report));
        }
    }
    (!body.is_empty()).then(|| {
        format!(
            "<section id=\"case-{index}\">\n<h2>{}</h2>\n<p class=\"note\">{}</p>\n{body}</section>\n",
            escape(&outcome.label),
            escape(&outcome.reference.display().to_string())
        )
    })
}

/// Every tensor of a failed case, then why each failure fails (folded when there are many).
fn failures(report: &Report) -> String {
    let failed: Vec<_> = report.failures().collect();
    let mut out = format!(
        "<h3>Tensors</h3>\n<p class=\"bad\">{} of {} tensors match.</p>\n{}",
        report.rows.len() - failed.len(),
        report.rows.len(),
        table(&report.table(), |_| None)
    );
    let why: String = failed
        .iter()
        .map(|row| format!("{}: {}\n\n", row.name, row.comparison.to_string().trim_end()))
        .collect();
    out.push_str(&format!(
        "<details{}><summary>Why each failing tensor fails ({})</summary>\n{}</details>\n",
        if failed.len() <= 3 { " open" } else { "" },
        failed.len(),
        pre(&why)
    ));
    out
}

fn trace_section(outcome: &Outcome, trace: &TraceReport, rule: Rule) -> String {
    let mut out = String::from("<h3>Error along the forward pass</h3>\n");
    if trace.rows.is_empty() {
        out.push_str(&format!(
            "<p class=\"warn\">{}</p>\n",
            escape(&outcome::empty_trace_note(outcome))
        ));
        return out;
    }
    let limit = match rule {
        Rule::Calibrated { limit } => limit,
        Rule::AssertClose => NOISE_LIMIT,
    };
    let (svg, notes) = plot(trace, limit, rule == Rule::AssertClose);
    out.push_str(&format!("<div class=\"plot\">\n{svg}</div>\n"));
    let notes: Vec<String> = notes.iter().map(|note| escape(note)).collect();
    out.push_str(&format!("<p class=\"note\">{}</p>\n", notes.join("<br>\n")));
    out.push_str(&pre(&outcome::trace_trailer(trace)));
    out.push_str(&format!(
        "<details><summary>Every module ({} rows)</summary>\n{}</details>\n",
        trace.rows.len(),
        table(&trace.table(), |_| None)
    ));
    out
}

/// A log-scale y axis over whole decades `lo..=hi`, drawn from `top` down `height` pixels.
struct LogAxis {
    lo: i32,
    hi: i32,
    top: f64,
    height: f64,
}

impl LogAxis {
    /// Decades covering every positive finite value and `extra`; one more below when
    /// some value is zero, whose bottom line is the floor zeros are drawn at.
    fn new(values: &[Option<f64>], extra: Option<f64>, top: f64, height: f64) -> Self {
        let positive = || {
            values
                .iter()
                .flatten()
                .chain(&extra)
                .copied()
                .filter(|v| v.is_finite() && *v > 0.0)
        };
        let lo = positive().map(|v| v.log10().floor() as i32).min().unwrap_or(-1);
        let hi = positive()
            .map(|v| v.log10().ceil() as i32)
            .max()
            .unwrap_or(1)
            .max(lo + 1);
        let zeros = values.iter().flatten().any(|v| *v == 0.0);
        LogAxis {
            lo: if zeros { lo - 1 } else { lo },
            hi,
            top,
            height,
        }
    }

    /// The y of `value`, clamped into the axis (zero to the floor, infinity to the top).
    fn y(&self, value: f64) -> f64 {
        let decades = if value > 0.0 { value.log10() } else { f64::from(self.lo) };
        let decades = decades.clamp(f64::from(self.lo), f64::from(self.hi));
        self.top + self.height * (f64::from(self.hi) - decades) / f64::from(self.hi - self.lo)
    }
}

/// `1e-7`, `0.01`, `1`, `1000`: a decade as an axis label.
fn decade(exponent: i32) -> String {
    match exponent {
        -2..=-1 => format!("{}", 10f64.powi(exponent)),
        0..=3 => format!("{}", 10i64.pow(exponent as u32)),
        _ => format!("1e{exponent}"),
    }
}

fn sci(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2e}")
    } else {
        value.to_string()
    }
}

/// One series of a panel: a value per module (`None` is a gap).
struct Series {
    class: &'static str,
    name: &'static str,
    title: &'static str,
    values: Vec<Option<f64>>,
}

const LEFT: f64 = 64.0;
const RIGHT: f64 = 60.0;
const MIN_WIDTH: f64 = 420.0;
const PANEL: f64 = 160.0;
const LABEL_CHARS: usize = 48;

/// Two log-scale panels over the modules in execution order (noise multiple with
/// the K line, then max absolute difference), the first divergence marked; and
/// notes on what is drawn where.
fn plot(trace: &TraceReport, limit: f64, reported_only: bool) -> (String, Vec<String>) {
    let rows = &trace.rows;
    let n = rows.len();
    let step = (1000.0 / n as f64).clamp(14.0, 80.0);
    let x = |i: usize| LEFT + step * (i as f64 + 0.5);
    let label = |row: &TraceRow| {
        let chars: Vec<char> = row.path.chars().collect();
        if chars.len() > LABEL_CHARS {
            format!("…{}", chars[chars.len() - LABEL_CHARS + 1..].iter().collect::<String>())
        } else {
            row.path.clone()
        }
    };
    let label_px = rows.iter().map(|r| label(r).chars().count()).max().unwrap_or(0) as f64 * 5.5 + 10.0;
    let multiples = Series {
        class: "m",
        name: "noise multiple",
        title: "noise multiple",
        values: rows
            .iter()
            .map(|r| r.comparison.as_ref().and_then(|c| c.multiple()))
            .collect(),
    };
    let abs = Series {
        class: "a",
        name: "max abs diff",
        title: "max abs diff, max |port - reference|",
        values: rows
            .iter()
            .map(|r| {
                r.comparison
                    .as_ref()
                    .and_then(|c| c.max_abs_diff.as_ref())
                    .map(|e| e.value)
            })
            .collect(),
    };
    let first = trace.first_divergence.as_deref();
    let failed: Vec<bool> = rows
        .iter()
        .map(|r| r.comparison.as_ref().is_some_and(|c| !c.passed()))
        .collect();
    let top_axis = LogAxis::new(&multiples.values, Some(limit), 44.0, PANEL);
    let bottom_axis = LogAxis::new(&abs.values, None, top_axis.top + PANEL + 40.0, PANEL);
    let right = LEFT + step * n as f64;
    let mut width = (right + RIGHT).max(MIN_WIDTH);
    let height = bottom_axis.top + PANEL + label_px + 8.0;
    // The first divergent module's name goes on top, beside its line, where it fits.
    let divergent = first
        .and_then(|path| rows.iter().position(|r| r.path == path))
        .map(|i| {
            let text = format!("first divergence: #{} {}", i + 1, rows[i].path);
            let px = text.chars().count() as f64 * 6.6;
            let fits_right = x(i) + 4.0 + px <= width;
            if !fits_right && x(i) - 4.0 - px < 0.0 {
                width = x(i) + 4.0 + px + 4.0;
            }
            let anchor = if fits_right || x(i) - 4.0 - px < 0.0 {
                "start"
            } else {
                "end"
            };
            (i, text, anchor)
        });

    let mut svg = format!(
        "<svg width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" \
         aria-label=\"noise multiple and max abs diff of {n} modules in execution order\">\n"
    );
    // Hover targets first, under everything: one column per module, its numbers in a tooltip.
    for (i, row) in rows.iter().enumerate() {
        let tip = match &row.comparison {
            None => "no reference activation".to_string(),
            Some(c) => format!(
                "noise x {}, max abs diff {}, {}",
                c.multiple().map_or("- (no shadow)".into(), format_multiple),
                c.max_abs_diff.as_ref().map_or("-".into(), |e| sci(e.value)),
                if c.passed() { "ok" } else { "FAIL" }
            ),
        };
        svg.push_str(&format!(
            "<rect class=\"hit\" x=\"{:.1}\" y=\"{:.1}\" width=\"{step:.1}\" height=\"{:.1}\"><title>#{} {}: {}</title></rect>\n",
            x(i) - step / 2.0,
            top_axis.top,
            bottom_axis.top + PANEL - top_axis.top,
            i + 1,
            escape(&row.path),
            escape(&tip)
        ));
    }
    for (series, axis) in [(&multiples, &top_axis), (&abs, &bottom_axis)] {
        svg.push_str(&panel(series, axis, right, &x, &failed, rows));
    }
    // K, on the multiples' panel.
    let y = top_axis.y(limit);
    svg.push_str(&format!(
        "<line class=\"limit\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{right:.1}\" y2=\"{y:.1}\"/>\
         <text class=\"limit\" x=\"{:.1}\" y=\"{:.1}\">K = {limit}</text>\n",
        right + 4.0,
        y + 4.0
    ));
    // The first divergent module: a line through both panels and its name on top.
    if let Some((i, text, anchor)) = divergent {
        let (x, bottom) = (x(i), bottom_axis.top + PANEL);
        let dx = if anchor == "start" { 4.0 } else { -4.0 };
        svg.push_str(&format!(
            "<line class=\"diverge\" x1=\"{x:.1}\" y1=\"12\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\
             <text class=\"diverge\" x=\"{:.1}\" y=\"14\" text-anchor=\"{anchor}\">{}</text>\n",
            x + dx,
            escape(&text)
        ));
    }
    // The module names, read bottom to top under the lower panel.
    for (i, row) in rows.iter().enumerate() {
        let class = if Some(row.path.as_str()) == first {
            " class=\"first\""
        } else if row.comparison.is_none() {
            " class=\"none\""
        } else {
            ""
        };
        let (lx, ly) = (x(i) + 4.0, bottom_axis.top + PANEL + 8.0);
        svg.push_str(&format!(
            "<text{class} x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"end\" transform=\"rotate(-90 {lx:.1} {ly:.1})\">{}</text>\n",
            escape(&label(row))
        ));
    }
    svg.push_str("</svg>\n");

    let mut notes = vec![format!(
        "Modules in execution order. Upper panel: the noise multiple of each module's output (its error against \
         the float64 shadow over the reference's own), dashed at the limit K = {limit}{}. Lower panel: the greatest \
         absolute difference from the reference.",
        if reported_only {
            " (reported only: --rule assert-close decides)"
        } else {
            ""
        }
    )];
    notes.extend(self::notes(rows, [(&multiples, &top_axis), (&abs, &bottom_axis)]));
    (svg, notes)
}

fn modules(n: usize) -> String {
    if n == 1 {
        "1 module".into()
    } else {
        format!("{n} modules")
    }
}

/// What the plot draws where the log scale or the data cannot show a value.
fn notes(rows: &[TraceRow], panels: [(&Series, &LogAxis); 2]) -> Vec<String> {
    let mut notes = Vec::new();
    for (series, axis) in panels {
        let count = |keep: fn(f64) -> bool| modules(series.values.iter().flatten().filter(|v| keep(**v)).count());
        if series.values.contains(&Some(0.0)) {
            notes.push(format!(
                "Log scale: a {} of 0 ({}) is drawn at the floor {}, as an open marker.",
                series.name,
                count(|v| v == 0.0),
                decade(axis.lo)
            ));
        }
        if series.values.contains(&Some(f64::INFINITY)) {
            notes.push(format!(
                "An infinite {} ({}) is drawn at the top, as an open marker.",
                series.name,
                count(|v| v == f64::INFINITY)
            ));
        }
    }
    let unreferenced = rows.iter().filter(|r| r.comparison.is_none()).count();
    if unreferenced > 0 {
        notes.push(format!(
            "No reference activation ({}): a gap in both panels, the name in grey.",
            modules(unreferenced)
        ));
    }
    let unshadowed = rows
        .iter()
        .filter(|r| r.comparison.as_ref().is_some_and(|c| c.multiple().is_none()))
        .count();
    if unshadowed > 0 {
        notes.push(format!(
            "No float64 shadow, so no noise multiple ({}): a gap in the upper panel.",
            modules(unshadowed)
        ));
    }
    notes.push("Red markers: modules whose comparison fails. Hover a column for its numbers.".to_string());
    notes
}

/// One panel: title, decade grid and labels, axes, the series' line (broken at gaps) and markers.
fn panel(
    series: &Series,
    axis: &LogAxis,
    right: f64,
    x: &impl Fn(usize) -> f64,
    failed: &[bool],
    rows: &[TraceRow],
) -> String {
    let bottom = axis.top + axis.height;
    let mut out = format!(
        "<text class=\"title\" x=\"{LEFT}\" y=\"{:.1}\">{} (log scale)</text>\n",
        axis.top - 8.0,
        escape(series.title)
    );
    let every = if axis.hi - axis.lo > 8 { 2 } else { 1 };
    for exponent in (axis.lo..=axis.hi).filter(|e| (e - axis.lo) % every == 0) {
        let y = axis.y(10f64.powi(exponent));
        out.push_str(&format!(
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{right:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            LEFT - 6.0,
            y + 4.0,
            decade(exponent)
        ));
    }
    out.push_str(&format!(
        "<path class=\"axis\" d=\"M{LEFT} {:.1} V{bottom:.1} H{right:.1}\"/>\n",
        axis.top
    ));
    let mut path = String::new();
    let mut pen_down = false;
    for (i, value) in series.values.iter().enumerate() {
        match value.filter(|v| !v.is_nan()) {
            Some(v) => {
                path.push_str(&format!(
                    "{}{:.1} {:.1} ",
                    if pen_down { "L" } else { "M" },
                    x(i),
                    axis.y(v)
                ));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    out.push_str(&format!(
        "<path class=\"{}\" d=\"{}\"/>\n",
        series.class,
        path.trim_end()
    ));
    for (i, value) in series.values.iter().enumerate() {
        let Some(v) = value.filter(|v| !v.is_nan()) else {
            continue;
        };
        let mut class = format!("pt {}", series.class);
        if failed[i] {
            class.push_str(" fail");
        }
        if v == 0.0 || v.is_infinite() {
            class.push_str(" clamped");
        }
        let shown = if series.class == "m" {
            format_multiple(v)
        } else {
            sci(v)
        };
        out.push_str(&format!(
            "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>#{} {}: {shown}</title></circle>\n",
            x(i),
            axis.y(v),
            i + 1,
            escape(&rows[i].path)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use replica_check::{compare, compare_with_shadow, Tolerance};

    use super::*;

    fn row(path: &str, shadow: Option<bool>) -> TraceRow {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        let (actual, expected) = (t(&[1.0, 2.0]), t(&[1.0, 2.5]));
        let tolerance = Tolerance::for_dtype(candle_core::DType::F32);
        let comparison = shadow.map(|with| match with {
            true => {
                let shadow = Tensor::new(&[1.0f64, 2.5], &Device::Cpu).unwrap();
                compare_with_shadow(&actual, &expected, Some(&shadow), tolerance, Rule::default())
            }
            false => compare(&actual, &expected, tolerance),
        });
        TraceRow {
            path: path.into(),
            shape: vec![2],
            comparison,
        }
    }

    #[test]
    fn modules_without_a_reference_or_a_multiple_are_gaps() {
        let trace = TraceReport {
            rows: vec![
                row("a", Some(true)),
                row("<b>", None),
                row("c", Some(true)),
                row("d", Some(false)),
            ],
            first_divergence: Some("a".into()),
            not_recorded: Vec::new(),
            reference_activations: 3,
        };
        let (svg, notes) = plot(&trace, 10.0, false);
        assert_eq!(svg.matches("<circle class=\"pt m").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle class=\"pt a").count(), 3, "{svg}");
        let path = |class: &str| {
            let start = svg.find(&format!("<path class=\"{class}\" d=\"")).unwrap();
            svg[start..].lines().next().unwrap().to_string()
        };
        // The line is lifted over each gap: a new `M`, never an `L` across it.
        assert_eq!(path("m").matches('M').count(), 2, "{}", path("m"));
        assert_eq!(path("m").matches('L').count(), 0, "{}", path("m"));
        assert_eq!(path("a").matches('M').count(), 2, "{}", path("a"));
        assert_eq!(path("a").matches('L').count(), 1, "{}", path("a"));
        assert!(svg.contains("first divergence: #1 a</text>"));
        assert!(svg.contains("<text class=\"none\""));
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("No reference activation (1 module)")),
            "{notes:?}"
        );
        assert!(notes
            .iter()
            .any(|n| n.starts_with("No float64 shadow, so no noise multiple (1 module)")));
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x' & \"y\")</script>"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
    }

    #[test]
    fn a_log_axis_takes_zeros_to_a_floor_below_the_data() {
        let axis = LogAxis::new(&[Some(0.0), Some(3e-7), None, Some(8e-6)], None, 0.0, 100.0);
        assert_eq!((axis.lo, axis.hi), (-8, -5));
        assert_eq!(axis.y(0.0), 100.0);
        assert_eq!(axis.y(1e-5), 0.0);
        assert_eq!(axis.y(f64::INFINITY), 0.0);
        // K is always on the axis, even above every value.
        let axis = LogAxis::new(&[Some(0.5), Some(2.0)], Some(10.0), 0.0, 100.0);
        assert_eq!((axis.lo, axis.hi), (-1, 1));
        assert_eq!(decade(-1), "0.1");
        assert_eq!(decade(3), "1000");
        assert_eq!(decade(-7), "1e-7");
    }
}
